"""The shard format in one place: schema (manifest columns, sample members, ClipSample), tar writing and
reading, the index of clip samples. docs/shards.md describes it."""
