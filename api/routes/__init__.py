"""Route modules, one per resource; :data:`api_router` gathers them."""

from fastapi import APIRouter

from api.routes import admin, batches, comparison, feedback, health, lineage, models, predict, reports, review

api_router = APIRouter()
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

__all__ = ["api_router"]
