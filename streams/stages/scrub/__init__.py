"""Scrub: take secrets and personal data out of events before anything is written.

Lightdash's rule, made a policy file (streams/policies/scrub.yaml): never track passwords,
secrets, credentials, query SQL or schema names. Key rules drop or hash values by key name
(JSON at any depth, the `properties` map, `name=value` in free text); value detectors find
tokens, keys, card numbers, emails and IPs anywhere in a string. User ids and emails become
keyed HMAC pseudonyms, so distinct counts stay exact. Every change is recorded in the row's
`scrubbed_fields` as "<field>[.<json path or key>]:<action>:<rule>".

    policy     the YAML file, parsed and checked
    detectors  the built-in value detectors
    rules      a policy compiled for one app, with the prefilter
    values     one value scrubbed (strings, JSON, key rules, pseudonyms)
    scrubber   rows, batches as columns, wire messages, profiles
    logs       log lines through the same policy
"""
from streams.stages.scrub.detectors import (ACTION_TEXT_FIELDS, DETECTOR_NAMES, DEVELOPMENT_HMAC_KEY,
                                            PSEUDONYM_PREFIX, ROW_TEXT_FIELDS, is_pseudonym, luhn_ok)
from streams.stages.scrub.logs import ScrubLogFilter, scrub_logs
from streams.stages.scrub.policy import ScrubPolicy, load_policy
from streams.stages.scrub.scrubber import Scrubber, SourceScrubber

__all__ = ["ACTION_TEXT_FIELDS", "DETECTOR_NAMES", "DEVELOPMENT_HMAC_KEY", "PSEUDONYM_PREFIX", "ROW_TEXT_FIELDS",
           "ScrubLogFilter", "ScrubPolicy", "Scrubber", "SourceScrubber", "is_pseudonym", "load_policy", "luhn_ok", "scrub_logs"]
