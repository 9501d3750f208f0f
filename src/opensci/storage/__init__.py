"""The content-addressed, chunk-deduplicated blob store: the bytes of large files (Git LFS objects).

Files are cut into content-defined chunks (FastCDC); each chunk is stored once, whatever the files,
revisions, repositories and owners that share it, in append-only pack files below `HOME/blobs/packs`.
A stored file (an *object*) is named by the sha256 of its content, the Git LFS oid, and is a manifest
of chunk names (the BLAKE3 of each chunk's bytes) in the database. `store.BlobStore` has the
operations; `maintenance` (scrub, reindex, stats) and `gc` (garbage collection, compaction) the
operators' work behind `opensci storage`; `references` finds the Git LFS pointers that keep objects
alive; `errors`, what can go wrong.
"""
