"""Route modules, one per resource; :data:`api_router` gathers them."""

from fastapi import APIRouter, Depends

from api.routes import admin, batches, comparison, feedback, health, lineage, metrics, models, predict, reports, review
from api.schemas import checked_parameters

# every route: no control character in any path or query parameter (422 naming it; api/schemas.py)
api_router = APIRouter(dependencies=[Depends(checked_parameters)])
api_router.include_router(predict.router)
api_router.include_router(feedback.router)
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(reports.router)
api_router.include_router(batches.router)
api_router.include_router(lineage.router)
api_router.include_router(comparison.router)
api_router.include_router(admin.router)
api_router.include_router(review.router)
api_router.include_router(metrics.router)

__all__ = ["api_router"]
