"""The security headers of every page the platform serves (the API and the Airflow plugin's views).

No I/O and no heavy import: the Airflow plugin imports this module in its handlers.

- :data:`REPORT_CSP`: a drift report's HTML (Evidently's page: inline scripts and styles, data: fonts
  and images). ``sandbox allow-scripts`` runs it in an opaque origin: a script in it, even one that a
  report saved before the data was escaped (ml/stages/monitoring/report_html.py) could carry, reads no
  cookie, no storage and nothing of the origin that serves it, and ``connect-src 'none'`` /
  ``default-src 'none'`` leave it no request to make (no fetch, no image or form to another host).
- :data:`PAGE_CSP`: the web page and the review page (scripts and styles from /static only).
- :data:`DOCS_CSP`: Swagger UI and ReDoc, served from the app (ReDoc's search runs in a blob: worker).
- :data:`HTML_NO_SCRIPT_CSP`: server-made pages with no script at all (the comparison page, the plugin's
  report list and model card): an inline ``<style>``, images from the same origin.
- :data:`API_CSP`: everything else (JSON, static files): nothing may load or run.
"""

from __future__ import annotations

REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'"
)
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src blob:; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
HTML_NO_SCRIPT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"

# sent with every answer (the API); the plugin's pages, which the Airflow UI embeds, use SAMEORIGIN
COMMON = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def report_headers(frame_ancestors: str = "'none'") -> dict[str, str]:
    """Headers of a drift report's HTML (``frame_ancestors``: who may embed it)."""
    return {"Content-Security-Policy": f"{REPORT_CSP}; frame-ancestors {frame_ancestors}"}


def plugin_headers(csp: str) -> dict[str, str]:
    """Headers of a plugin page inside the Airflow UI (embedded in the UI's iframes: same origin only)."""
    return {
        "Content-Security-Policy": csp.replace("frame-ancestors 'none'", "frame-ancestors 'self'"),
        "X-Frame-Options": "SAMEORIGIN",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
