"""The resilience tests (issue 26) that need no API server: property-based tests (hypothesis) of the
prediction log's records, the tweet reader, snapshot hashes, signed ids and tokens and the McNemar
mid-p, and the migrations applied twice, concurrently and over the previous version's rows. The
ones that need a live API (full disk, repeated kill -9, many workers) live in tests/system/api/."""
