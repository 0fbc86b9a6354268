-- Facts about the deployment the rows depend on, one value per name (the latest wins):
--   hmac_key_fingerprint  names the key every pseudonym was made with (streams/store/pseudonym_key.py)
CREATE TABLE IF NOT EXISTS tally_meta
(
    name        String,
    value       String,
    updated_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY name;
