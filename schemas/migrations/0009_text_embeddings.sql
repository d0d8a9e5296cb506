-- Embeddings of texts by the base model (the cosine and page tiers), shared by every worker and
-- kept across restarts, so a product text is embedded once, by whichever process meets it first:
-- a worker on a cold miss, or `relmon model embed` ahead of the catalogue's traffic.
-- One row per (embedder, text_key): the embedder names the ONNX file and the token cap
-- (scoring.Scorer.embedder), text_key is the text's 128-bit BLAKE2b (scoring.embedding.text_key).
-- Two processes racing on a text both write it; `keep` is 2^63 minus the write time in ms, so
-- merges, like every read (argMax by keep), keep the first vector written and all workers score
-- with the same one.
CREATE TABLE IF NOT EXISTS text_embeddings
(
    embedder LowCardinality(String),
    text_key String,
    vector Array(Float32),
    keep UInt64
)
ENGINE = ReplacingMergeTree(keep)
ORDER BY (embedder, text_key);
