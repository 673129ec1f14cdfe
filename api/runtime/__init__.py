"""The serving process behind the HTTP layer: the champion poller and atomic swap (``model_manager``),
the shadow scorer (``shadow``), micro-batched model calls (``batcher`` + ``inference``), the durable
prediction log and its writer into PostgreSQL (``predlog`` + ``writer``), feedback and the alert thread
(``recording``), prediction rows and signed ids (``serving``), and the background threads' lifecycle
(``background``). It never imports ``api.routes`` nor ``api.main`` (import-linter contract
``api-runtime-below-http``)."""
