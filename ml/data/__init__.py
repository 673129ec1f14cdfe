"""Data: read tweet files, validate them, store validated snapshots named by content hash.

One reader (:func:`ml.data.read.iter_records`) serves training, batch scoring and retraining.
Layouts (no header, or a header line that is skipped):
- Sentiment140's six columns ``polarity,id,date,query,user,text`` (Latin-1 in the original);
- two columns ``polarity,text``;
- one column (text only) and ``.txt`` (one tweet per line): scoring only, no label;
- Parquet with a ``text`` column (and ``polarity``/``label`` for training).
Polarity is 0/4 (Sentiment140) or 0/1; 2 (neutral) is rejected. Bytes are decoded as UTF-8
where valid, else Latin-1, line by line, so a mixed file still reads.

The modules: ``read`` (the one tweet-file reader: formats, decoding, ``iter_records``,
``read_labelled``), ``validation`` (``validate``: duplicates, label conflicts, the report and its
Markdown), ``snapshots`` (content-hashed snapshots on disk and in the database, a snapshot's stored
split, ``validate_and_snapshot``), ``splits`` (the train/held-out split of a snapshot, stratified
samples). This file holds only ``DataError`` (defined in :mod:`ml.platform.errors`: ``make up``'s training
file, ``ml.platform.startup.sources``, raises it too), shared by them.
"""

from ml.platform.errors import DataError

__all__ = ["DataError"]
