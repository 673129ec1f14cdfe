"""The drift report's HTML, written so that no tweet text can run as script.

Evidently 0.7's ``Snapshot.save_html`` embeds the dashboard's data (which holds the monitored
texts) as ``<script>var metric_… = {json}</script>`` with plain ``json.dumps``: a text containing
``</script><img src=x onerror=…>`` closes the script block and its markup runs when the report is
opened. :func:`render` builds the same page from Evidently's own template (its library, fonts and
widgets unchanged) with the data block left out, and puts the data in with :func:`script_json`,
which escapes ``<``, ``>``, ``&``, U+2028 and U+2029 as ``\\u003c`` etc. inside the JSON strings
(valid JSON and JavaScript either way), so nothing in the data can end the script element or open
a comment. The reports are also served with a sandboxing Content-Security-Policy
(:mod:`ml.platform.http_headers`), which covers files saved before this change.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

# what must not appear raw in data inside an HTML <script> element
_SCRIPT_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_NO_DATA_MARKER = "<!-- no embedded data -->"  # what Evidently's template writes with embed_data=False


def script_json(obj: Any) -> str:
    """``obj`` as JSON that is safe inside an inline ``<script>`` (Evidently's numpy-aware encoder).
    The escaped characters can only occur inside JSON strings, where ``\\uXXXX`` means the same."""
    from evidently.legacy.utils import NumpyEncoder

    return json.dumps(obj, cls=NumpyEncoder).translate(_SCRIPT_ESCAPES)


def render(snapshot: Any, summary: dict[str, Any] | None = None) -> str:
    """The standalone HTML of an Evidently 0.7 snapshot (``Report.run``'s result), as
    ``snapshot.save_html`` writes it (``evidently.core.metric_types.render_widgets``) but with the
    embedded data encoded by :func:`script_json`; with ``summary``, the platform's verdict block
    (:mod:`ml.stages.monitoring.verdict`, escaped HTML, no script) first in the page's body."""
    from evidently.legacy.model.dashboard import DashboardInfo
    from evidently.legacy.model.widget import AdditionalGraphInfo, BaseWidgetInfo
    from evidently.legacy.renderers.html_widgets import group_widget
    from evidently.legacy.utils.dashboard import TemplateParams, file_html_template

    widgets: list[BaseWidgetInfo] = [group_widget(title="", widgets=snapshot._widgets), *snapshot._tests_widgets]
    additional: dict[str, Any] = {}
    for widget in widgets:
        for graph in widget.get_additional_graphs():
            info = graph.params if isinstance(graph, AdditionalGraphInfo) else graph
            additional[f"{graph.id}"] = info.dict() if isinstance(info, BaseWidgetInfo) else info
    dashboard_id = "metric_" + uuid.uuid4().hex
    dashboard = DashboardInfo(name="Report", widgets=widgets).dict()
    for w in dashboard["widgets"]:
        w.pop("additionalGraphs", None)  # as evidently.legacy.utils.dashboard.dashboard_info_to_json
    page = file_html_template(
        TemplateParams(
            dashboard_id=dashboard_id,
            dashboard_info=DashboardInfo(name="Report", widgets=[]),
            additional_graphs={},
            embed_data=False,
        )
    )
    if page.count(_NO_DATA_MARKER) != 1:  # pragma: no cover - a changed Evidently template
        raise RuntimeError("Evidently's HTML template changed: cannot place the report's data safely")
    if summary is not None:  # placed before the data goes in: only the template's own <body> is matched
        from ml.stages.monitoring.verdict import with_block

        page = with_block(page, summary)
    data = (
        f"<script>\n    var {dashboard_id} = {script_json(dashboard)};\n"
        f"    var additional_graphs_{dashboard_id} = {script_json(additional)};\n</script>"
    )
    return page.replace(_NO_DATA_MARKER, data)


def save(snapshot: Any, path: str | Path, summary: dict[str, Any] | None = None) -> None:
    """Write :func:`render`'s page to ``path`` (UTF-8)."""
    Path(path).write_text(render(snapshot, summary), encoding="utf-8")
