"""Scrub stage: policy loading, each detector and action, key rules, users, audit, and the
property that a planted secret never reaches any output."""
from __future__ import annotations

import json
import logging
import random
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.stages import scrub
from streams.contract import UserAction, UserProfile
from streams.stages.scrub import Scrubber, load_policy

KEY = "test-hmac-key"


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    return Scrubber(load_policy(hmac_key=KEY))


def policy_file(tmp_path, text: str):
    path = tmp_path / "scrub.yaml"
    path.write_text(text)
    return path


def row(**fields) -> dict:
    base = {name: "" for name in scrub.ROW_TEXT_FIELDS}
    base.update(app="amundsen", user="user42", user_email="", properties={})
    base.update(fields)
    return base


def scrub_one(scrubber: Scrubber, event: dict) -> dict:
    """One event through the pipeline's path, `scrub_columns`, between two clean neighbours (the
    prefilter searches whole columns, so a verdict must not depend on the rest of the batch)."""
    events = [row(scrubbed_fields=[]), {"scrubbed_fields": [], **event}, row(scrubbed_fields=[])]
    names = list(dict.fromkeys(name for e in events for name in e))
    columns = {name: [e.get(name, row().get(name, "")) for e in events] for name in names}
    scrubber.scrub_columns(columns)
    scrubbed = {name: values[1] for name, values in columns.items()}
    return scrubbed


def luhn_card(rng: random.Random, first: str = "4", length: int = 16) -> str:
    digits = first + "".join(rng.choice(string.digits) for _ in range(length - len(first) - 1))
    for check in string.digits:
        if scrub.luhn_ok(digits + check):
            return digits + check
    raise AssertionError("unreachable")


def rand(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# --------------------------------------------------------------------------- policy file

def test_bundled_policy_loads_with_every_detector():
    policy = load_policy(hmac_key=KEY)
    assert set(policy.detectors) == set(scrub.DETECTOR_NAMES)
    assert {rule.name for rule in policy.key_rules} >= {"secret_key", "query_text", "schema_name"}
    assert "bi" in policy.apps
    assert KEY not in repr(policy)


def test_missing_hmac_key_warns_and_still_works(caplog):
    with caplog.at_level(logging.WARNING, logger="streams.stages.scrub"):
        scrubber = Scrubber(load_policy(hmac_key=""))
    assert "TALLY_HMAC_KEY" in caplog.text
    assert scrubber.pseudonym("alice") == Scrubber(load_policy(hmac_key=scrub.DEVELOPMENT_HMAC_KEY)).pseudonym("alice")


@pytest.mark.parametrize("text, named", [
    ("key_rules: {secret_key: {action: dorp, keys: [password]}}", "key_rules.secret_key.action"),
    ("key_rules: {secret_key: {action: drop, keys: password}}", "key_rules.secret_key.keys"),
    ("key_rules: {secret_key: {action: drop, keys: ['pass(word']}}", "key_rules.secret_key.keys[0]"),
    ("key_rules: {Secret: {action: drop, keys: [x]}}", "key_rules.Secret"),
    ("key_rules: {jwt: {action: drop, keys: [x]}}", "key_rules.jwt"),
    ("detectors: {jwt: mask, ssn_number: mask}", "detectors.ssn_number"),
    ("detectors: {jwt: {action: truncate, keep_chars: -1}}", "detectors.jwt.keep_chars"),
    ("max_chars: {body: 10}", "max_chars.body"),
    ("max_chars: {output: 0}", "max_chars.output"),
    ("pseudonymise_users: true", "pseudonymise_users"),
    ("pseudonymize_users: maybe", "pseudonymize_users"),
    ("apps: {bi: {pseudonymize_users: true}}", "apps.bi.pseudonymize_users"),
    ("apps: {bi: {keep_key: [query_id]}}", "apps.bi.keep_key"),
    ("apps: {bi: {detectors: {ipv4: hide}}}", "apps.bi.detectors.ipv4.action"),
    ("version: 2", "version"),
    ("- just a list", "mapping"),
    ("key_rules: [unclosed", "not valid YAML"),
])
def test_invalid_policy_names_the_bad_entry(tmp_path, text, named):
    with pytest.raises(ValueError) as error:
        load_policy(policy_file(tmp_path, text), hmac_key=KEY)
    assert named in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_missing_policy_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_policy(tmp_path / "nope.yaml", hmac_key=KEY)


def test_a_detector_left_out_of_the_file_keeps_its_default(tmp_path):
    policy = load_policy(policy_file(tmp_path, "detectors: {ipv4: keep}"), hmac_key=KEY)
    assert policy.detectors["ipv4"].kind == "keep"
    assert policy.detectors["jwt"].kind == "mask"
    assert policy.detectors["email"].kind == "hmac"


# --------------------------------------------------------------------------- detectors

RNG = random.Random(20240601)
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36P"
AWS = "AKIAIOSFODNN7EXAMPLE"
GCP = "AIza" + rand(RNG, 35)
GITHUB = "ghp_" + rand(RNG, 36)
SLACK = "xoxb-2048-" + rand(RNG, 24)
CARD = luhn_card(RNG)
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n-----END RSA PRIVATE KEY-----"

DETECTOR_CASES = [
    # (text, secret that must be gone, expected audit entry)
    (f"token expired: {JWT}", JWT, "error:mask:jwt"),
    ("GET /api Authorization header was Bearer abcdef0123456789xyz", "abcdef0123456789xyz", "error:mask:bearer_token"),
    (f"aws key {AWS} rejected", AWS, "error:mask:aws_access_key"),
    (f"maps key={GCP}", GCP, "error:mask:gcp_api_key"),
    ("oauth ya29.a0AfH6SMBx3kLJdLqVQ8w9Hn2bYxZ leaked", "ya29.a0AfH6SMBx3kLJdLqVQ8w9Hn2bYxZ", "error:mask:gcp_oauth_token"),
    (f"clone with {GITHUB} failed", GITHUB, "error:mask:github_token"),
    (f"slack {SLACK}", SLACK, "error:mask:slack_token"),
    ("post to https://hooks.slack.com/services/T000/B000/XXXXabcd failed", "T000/B000/XXXXabcd", "error:mask:slack_webhook"),
    (f"key:\n{PRIVATE_KEY}\nend", "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM", "error:mask:private_key"),
    ("connect postgres://etl:hunter2pw@db.internal:5432/dw failed", "hunter2pw", "error:mask:url_password"),
    (f"paid with {CARD} today", CARD, "error:mask:card_number"),
    (f"paid with {CARD[:4]} {CARD[4:8]} {CARD[8:12]} {CARD[12:]} today", CARD[12:], "error:mask:card_number"),
    (f"card {CARD[:4]} {CARD[4:8]} {CARD[8:12]} {CARD[12:]} 7", CARD[8:12] + " " + CARD[12:], "error:mask:card_number"),
    ("owner bob.smith+x@corp.example.com asked", "bob.smith+x@corp.example.com", "error:hmac:email"),
    ("connection to 10.20.30.40:5432 refused", "10.20.30.40", "error:mask:ipv4"),
    ("peer 2001:db8:85a3::8a2e:370:7334 reset", "2001:db8:85a3::8a2e:370:7334", "error:mask:ipv6"),
    ("failed: SELECT email, salary FROM hr_private.staff WHERE id = 3", "hr_private", "error:mask:sql_statement"),
    ("ran select count(*) from sales_eu.orders;", "sales_eu", "error:mask:sql_statement"),
    ("ran SELECT id\nFROM people_db.staff", "people_db", "error:mask:sql_statement"),
    ("insert into finance_raw.ledger values (1)", "finance_raw", "error:mask:sql_statement"),
    ("CREATE TABLE analytics_secret.t AS SELECT 1", "analytics_secret", "error:mask:sql_statement"),
    ("login with password=s3cr3tpw now", "s3cr3tpw", "error:mask:secret_key"),
    ("cli --api-key AbCdEf123456 --verbose", "AbCdEf123456", "error:mask:secret_key"),
    ("{'client_secret': 'topsecret99', 'x': 1}", "topsecret99", "error:mask:secret_key"),
]


@pytest.mark.parametrize("text, secret, entry", DETECTOR_CASES)
def test_detector_finds_secret_in_free_text(scrubber, text, secret, entry):
    scrubbed = scrub_one(scrubber, row(error=text))
    assert secret not in scrubbed["error"]
    assert entry in scrubbed["scrubbed_fields"]


@pytest.mark.parametrize("text, secret, entry", DETECTOR_CASES)
def test_detector_finds_secret_inside_json(scrubber, text, secret, entry):
    payload = json.dumps({"args": [{"note": text}], "n": 1})
    scrubbed = scrub_one(scrubber, row(keyword_args_json=payload))
    assert secret not in scrubbed["keyword_args_json"]
    field_entry = entry.replace("error", "keyword_args_json.args[0].note", 1)
    assert field_entry in scrubbed["scrubbed_fields"]
    assert json.loads(scrubbed["keyword_args_json"])["n"] == 1


def test_email_pseudonym_is_the_user_pseudonym(scrubber):
    scrubbed = scrub_one(scrubber, row(label="shared with ann@example.com"))
    assert scrubbed["label"] == f"shared with {scrubber.pseudonym('ann@example.com')}"


@pytest.mark.parametrize("text", [
    "hive://gold.core/orders",
    "version 1.2.3 of the client",
    "started at 1718000000000 ms",                 # epoch milliseconds are not card numbers
    f"ref {CARD[:-1]}{(int(CARD[-1]) + 1) % 10}",  # fails the Luhn check
    "0190a3b2-7c1e-7000-8000-12ab34cd56ef",
    "meeting at 12:30:45 on 2024-06-01",
    "std::vector<int> overflow",
    "Select a table from the list",                # English, not SQL: no column list before FROM
    "Bearer",
    "@app.route decorator",
    "token expired",
    "query_term=orders",                           # a search term key, not query text
])
def test_clean_text_is_left_alone(scrubber, text):
    scrubbed = scrub_one(scrubber, row(label=text))
    assert scrubbed["label"] == text
    assert scrubbed["scrubbed_fields"] == []


# --------------------------------------------------------------------------- actions

@pytest.mark.parametrize("action_yaml, expected_error", [
    ("mask", "token expired: [redacted:jwt] (retry)"),
    ("drop", ""),
    ("{action: truncate, keep_chars: 6}", "token expired: eyJhbG\u2026 (retry)"),
    ("keep", f"token expired: {JWT} (retry)"),
])
def test_detector_actions(tmp_path, action_yaml, expected_error):
    scrubber = Scrubber(load_policy(policy_file(tmp_path, f"detectors: {{jwt: {action_yaml}}}"), hmac_key=KEY))
    scrubbed = scrub_one(scrubber, row(error=f"token expired: {JWT} (retry)"))
    assert scrubbed["error"] == expected_error
    kind = action_yaml.split()[-1].strip("{},") if "truncate" not in action_yaml else "truncate"
    assert scrubbed["scrubbed_fields"] == ([] if kind == "keep" else [f"error:{kind}:jwt"])


def test_hmac_action_on_a_detector_keeps_counts(tmp_path):
    scrubber = Scrubber(load_policy(policy_file(tmp_path, "detectors: {ipv4: hmac}"), hmac_key=KEY))
    first = scrub_one(scrubber, row(error="from 10.0.0.1"))["error"]
    again = scrub_one(scrubber, row(error="from 10.0.0.1"))["error"]
    other = scrub_one(scrubber, row(error="from 10.0.0.2"))["error"]
    assert first == again == f"from {scrubber.pseudonym('10.0.0.1')}"
    assert first != other


@pytest.mark.parametrize("rule_yaml, expected", [
    ("{action: drop, keys: [pin]}", {"table": "orders"}),
    ("{action: mask, keys: [pin]}", {"pin": "[redacted:pins]", "table": "orders"}),
    ("{action: truncate, keep_chars: 2, keys: [pin]}", {"pin": "12\u2026", "table": "orders"}),
])
def test_key_rule_actions(tmp_path, rule_yaml, expected):
    scrubber = Scrubber(load_policy(policy_file(tmp_path, f"key_rules: {{pins: {rule_yaml}}}"), hmac_key=KEY))
    scrubbed = scrub_one(scrubber, row(keyword_args_json=json.dumps({"pin": "123456", "table": "orders"})))
    assert json.loads(scrubbed["keyword_args_json"]) == expected
    assert scrubbed["scrubbed_fields"][0].startswith("keyword_args_json.pin:")


def test_hashed_key_keeps_distinct_values_distinct(tmp_path):
    scrubber = Scrubber(load_policy(policy_file(tmp_path, "key_rules: {ids: {action: hmac, keys: [account]}}"),
                                    hmac_key=KEY))
    values = [json.loads(scrub_one(scrubber, row(keyword_args_json=json.dumps({"account": f"acct-{i}"})))
                         ["keyword_args_json"])["account"] for i in range(200)]
    assert len(set(values)) == 200
    assert all(re.fullmatch(r"u_[0-9a-f]{20}", value) for value in values)


# --------------------------------------------------------------------------- key rules in JSON

def test_keys_are_matched_at_any_depth_and_spelling(scrubber):
    payload = {"table_key": "hive://gold.core/orders",
               "settings": {"DB_Password": "pw1", "apiKey": "k1", "X-Auth-Token": "t1", "sql": "select 1",
                        "warehouse_schema": "finance", "rows": [{"session_cookie": "c1"}]},
               "query_term": "orders"}
    scrubbed = scrub_one(scrubber, row(keyword_args_json=json.dumps(payload)))
    assert json.loads(scrubbed["keyword_args_json"]) == {
        "table_key": "hive://gold.core/orders", "settings": {"rows": [{}]}, "query_term": "orders"}
    assert scrubbed["scrubbed_fields"] == [
        "keyword_args_json.settings.DB_Password:drop:secret_key",
        "keyword_args_json.settings.apiKey:drop:secret_key",
        "keyword_args_json.settings.X-Auth-Token:drop:secret_key",
        "keyword_args_json.settings.sql:drop:query_text",
        "keyword_args_json.settings.warehouse_schema:drop:schema_name",
        "keyword_args_json.settings.rows[0].session_cookie:drop:secret_key",
    ]


@pytest.mark.parametrize("key", ["connection", "conn", "dsn", "warehouse_dsn", "connection_string",
                                 "pg_connection_string", "database_url"])
def test_values_under_connection_keys_are_dropped(scrubber, key):
    """A bare password or a whole URL under a key named for a connection never reaches the store."""
    scrubbed = scrub_one(scrubber, row(keyword_args_json=json.dumps({key: "Tr0ub4dor&3", "table": "orders"})))
    assert json.loads(scrubbed["keyword_args_json"]) == {"table": "orders"}
    assert scrubbed["scrubbed_fields"] == [f"keyword_args_json.{key}:drop:secret_key"]


def test_email_keys_are_hashed_not_dropped(scrubber):
    scrubbed = scrub_one(scrubber, row(keyword_args_json=json.dumps({"owner_email": "Ann Lee"})))
    assert json.loads(scrubbed["keyword_args_json"]) == {"owner_email": scrubber.pseudonym("Ann Lee")}
    assert scrubbed["scrubbed_fields"] == ["keyword_args_json.owner_email:hmac:email_address"]


def test_flag_arrays_hide_the_value_after_a_sensitive_flag(scrubber):
    scrubbed = scrub_one(scrubber, row(pos_args_json=json.dumps(["load", "--password", "pw9", "--table", "t"])))
    assert json.loads(scrubbed["pos_args_json"]) == ["load", "--password", "[redacted:secret_key]", "--table", "t"]
    assert scrubbed["scrubbed_fields"] == ["pos_args_json[2]:mask:secret_key"]


def test_json_in_a_json_string_is_scrubbed_too(scrubber):
    inner = json.dumps({"password": "pw-inner", "ok": 1})
    scrubbed = scrub_one(scrubber, row(output=json.dumps({"body": inner})))
    assert "pw-inner" not in scrubbed["output"]
    assert json.loads(json.loads(scrubbed["output"])["body"]) == {"ok": 1}


def test_a_secret_used_as_a_key_is_dropped_without_echoing_it(scrubber):
    scrubbed = scrub_one(scrubber, row(output=json.dumps({GITHUB: 1, "n": 2})))
    assert json.loads(scrubbed["output"]) == {"n": 2}
    assert scrubbed["scrubbed_fields"] == ["output.*:drop:github_token"]


def test_card_number_as_a_json_number(scrubber):
    scrubbed = scrub_one(scrubber, row(output=json.dumps({"card": int(CARD), "ts": 1718000000000})))
    assert json.loads(scrubbed["output"]) == {"card": "[redacted:card_number]", "ts": 1718000000000}


def test_clean_json_is_not_reserialised(scrubber):
    text = '{ "table_key" : "hive://gold.core/orders",  "index": 3 }'
    assert scrub_one(scrubber, row(keyword_args_json=text))["keyword_args_json"] == text


def test_changed_json_is_reserialised_compactly(scrubber):
    text = '{ "password" : "x",  "index": 3 }'
    assert scrub_one(scrubber, row(keyword_args_json=text))["keyword_args_json"] == '{"index":3}'


def test_broken_json_is_scrubbed_as_text(scrubber):
    scrubbed = scrub_one(scrubber, row(keyword_args_json='{"password": "pw-broken", "n": '))
    assert "pw-broken" not in scrubbed["keyword_args_json"]
    assert scrubbed["scrubbed_fields"] == ["keyword_args_json:mask:secret_key"]


def test_properties_map(scrubber):
    scrubbed = scrub_one(scrubber, row(properties={"browser": "firefox", "api_token": "t0k", "note": "ip 10.1.1.1",
                                                  "contact_email": "a@b.example"}))
    assert scrubbed["properties"] == {"browser": "firefox", "note": "ip [redacted:ipv4]",
                                      "contact_email": scrubber.pseudonym("a@b.example")}
    assert scrubbed["scrubbed_fields"] == ["properties.api_token:drop:secret_key", "properties.note:mask:ipv4",
                                           "properties.contact_email:hmac:email_address"]


# --------------------------------------------------------------------------- per-app overrides

def test_app_override_keeps_and_drops_its_own_keys(scrubber):
    payload = json.dumps({"query_id": "q-17", "query_body": "select 1", "dbt_model": "orders_v2", "chart": "bar"})
    in_bi = scrub_one(scrubber, row(app="bi", keyword_args_json=payload))
    elsewhere = scrub_one(scrubber, row(app="amundsen", keyword_args_json=payload))
    assert json.loads(in_bi["keyword_args_json"]) == {"query_id": "q-17", "chart": "bar"}
    assert "keyword_args_json.query_body:drop:extra_drop_keys" in in_bi["scrubbed_fields"]
    assert json.loads(elsewhere["keyword_args_json"]) == json.loads(payload)


def test_app_override_of_a_detector(tmp_path):
    text = "apps: {netops: {detectors: {ipv4: keep}}}"
    scrubber = Scrubber(load_policy(policy_file(tmp_path, text), hmac_key=KEY))
    assert scrub_one(scrubber, row(app="netops", host_name="10.0.0.7"))["host_name"] == "10.0.0.7"
    assert scrub_one(scrubber, row(app="other", host_name="10.0.0.7"))["host_name"] == "[redacted:ipv4]"


# --------------------------------------------------------------------------- users

def test_a_user_has_one_stored_id_in_every_app(tmp_path):
    """An app whose rules keep emails in its text still stores its users' email ids pseudonymised,
    exactly as every other app and the profiles do: the all-apps counts and the profile join need one id."""
    scrubber = Scrubber(load_policy(policy_file(tmp_path, "apps: {wiki: {detectors: {email: keep}}}"), hmac_key=KEY))
    wiki = scrub_one(scrubber, row(app="wiki", user="ann@example.com", output="mail ann@example.com"))
    catalog = scrub_one(scrubber, row(app="amundsen", user="ann@example.com"))
    profile = UserProfile(user="ann@example.com")
    scrubber.scrub_profile(profile)
    assert wiki["output"] == "mail ann@example.com"  # the override still applies to text
    assert wiki["user"] == catalog["user"] == profile.user == scrubber.scrub_user("ann@example.com")
    columns = {name: [value] for name, value in row(app="wiki", user="ann@example.com", scrubbed_fields=[]).items()}
    assert scrubber.scrub_columns(columns)["user"] == [profile.user]


def test_email_users_are_always_pseudonymised(scrubber):
    scrubbed = scrub_one(scrubber, row(user="Ann@Example.com", user_email="Ann@Example.com"))
    assert scrubbed["user"] == scrubbed["user_email"] == scrubber.pseudonym("Ann@Example.com")
    assert scrubbed["scrubbed_fields"] == ["user:hmac:email", "user_email:hmac:email"]


def test_plain_user_ids_stay_unless_the_policy_says(scrubber, tmp_path):
    assert scrub_one(scrubber, row(user="user42"))["user"] == "user42"
    strict = Scrubber(load_policy(policy_file(tmp_path, "pseudonymize_users: true"), hmac_key=KEY))
    scrubbed = scrub_one(strict, row(user="user42"))
    assert scrubbed["user"] == strict.pseudonym("user42")
    assert scrubbed["scrubbed_fields"] == ["user:hmac:pseudonymize_users"]


def test_pseudonyms_keep_distinct_counts_exact(tmp_path):
    strict = Scrubber(load_policy(policy_file(tmp_path, "pseudonymize_users: true"), hmac_key=KEY))
    users = [f"user{i}" for i in range(5000)] + [f"user{i}@corp.example.com" for i in range(5000)]
    events = [scrub_one(strict, row(user=user))["user"] for user in users * 2]
    assert len(set(events)) == len(users)


def test_pseudonym_depends_on_the_key():
    one, two = Scrubber(load_policy(hmac_key="one")), Scrubber(load_policy(hmac_key="two"))
    assert one.pseudonym("alice") == one.pseudonym("alice")
    assert one.pseudonym("alice") != two.pseudonym("alice")
    assert re.fullmatch(r"u_[0-9a-f]{20}", one.pseudonym("alice"))


def test_profile_matches_the_events_of_the_same_user(scrubber):
    profile = UserProfile(user="ann@example.com", email="ann@example.com", title="Analyst")
    scrubber.scrub_profile(profile)
    event = scrub_one(scrubber, row(user="ann@example.com"))
    assert profile.user == event["user"] == scrubber.scrub_user("ann@example.com")
    assert profile.email == scrubber.pseudonym("ann@example.com")
    assert profile.title == "Analyst"


# --------------------------------------------------------------------------- rows, messages, logs

def test_search_terms_stay_readable(scrubber):
    assert scrub_one(scrubber, row(search_term="revenue by country"))["search_term"] == "revenue by country"
    scrubbed = scrub_one(scrubber, row(search_term="tables owned by ann@example.com"))
    assert scrubbed["search_term"] == f"tables owned by {scrubber.pseudonym('ann@example.com')}"


def test_long_fields_are_truncated_and_audited(scrubber):
    scrubbed = scrub_one(scrubber, row(error="x" * 10_000))
    assert scrubbed["error"] == "x" * 8192 + "\u2026"
    assert scrubbed["scrubbed_fields"] == ["error:truncate:max_chars"]


def test_existing_audit_entries_are_kept(scrubber):
    scrubbed = scrub_one(scrubber, row(error=f"x {JWT}", scrubbed_fields=["producer:mask:jwt"]))
    assert scrubbed["scrubbed_fields"] == ["producer:mask:jwt", "error:mask:jwt"]


def test_scrubbing_twice_changes_nothing_more(scrubber):
    first = scrub_one(scrubber, row(error=f"password=pw1 {JWT} from 10.0.0.1", user="a@b.example",
                                   keyword_args_json=json.dumps({"token": "t", "dsn": "mysql://u:p4ss@h/db"})))
    before = json.dumps(first, sort_keys=True)
    second = scrub_one(scrubber, first)
    assert json.dumps(second, sort_keys=True) == before


def test_audit_entries_have_the_documented_shape(scrubber):
    scrubbed = scrub_one(scrubber, row(error=" ".join(text for text, _, _ in DETECTOR_CASES),
                                      keyword_args_json=json.dumps({"a": {"password": 1}, "b": [GITHUB]}),
                                      user="a@b.example", properties={"token": "x"}))
    assert len(scrubbed["scrubbed_fields"]) >= 5
    for entry in scrubbed["scrubbed_fields"]:
        assert re.fullmatch(r"[A-Za-z_][^:]*:(drop|mask|hmac|truncate):[a-z0-9_]+", entry), entry


def test_scrub_action_on_the_wire_message(scrubber):
    action = UserAction(app="amundsen", user="ann@example.com", command="search",
                        keyword_args_json=json.dumps({"password": "pw", "q": "orders"}),
                        error=f"bad token {JWT}", properties={"api_key": "k", "page": "home"})
    audit = scrubber.scrub_action(action)
    assert json.loads(action.keyword_args_json) == {"q": "orders"}
    assert action.error == "bad token [redacted:jwt]"
    assert dict(action.properties) == {"page": "home"}
    assert action.user == scrubber.pseudonym("ann@example.com")
    assert action.command == "search"
    assert audit == ["keyword_args_json.password:drop:secret_key", "error:mask:jwt",
                     "properties.api_key:drop:secret_key", "user:hmac:email"]
    assert b"pw" not in action.SerializeToString().replace(b"app", b"")


def test_scrub_action_leaves_a_clean_message_untouched(scrubber):
    action = UserAction(app="amundsen", user="user42", command="search", keyword_args_json='{"q": "orders"}')
    before = action.SerializeToString()
    assert scrubber.scrub_action(action) == []
    assert action.SerializeToString() == before


def test_scrub_text_for_logs_and_dead_letters(scrubber):
    text, audit = scrubber.scrub_text(f"insert failed for ann@example.com with {JWT}", field="detail")
    assert text == f"insert failed for {scrubber.pseudonym('ann@example.com')} with [redacted:jwt]"
    assert audit == ["detail:hmac:email", "detail:mask:jwt"]
    assert scrubber.scrub_text("all good") == ("all good", [])


def test_log_filter_scrubs_messages_and_arguments(scrubber):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("test_scrub.logs")
    logger.propagate = False
    handler = Keep()
    logger.addHandler(handler)
    scrub.scrub_logs(scrubber, logger)
    try:
        logger.warning("retrying %s with password=%s", "postgres://u:pw77@db/x", "pw88")
        try:
            raise RuntimeError(f"auth {JWT}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "pw77" not in records[0] and "pw88" not in records[0]
    assert JWT not in records[1] and "[redacted:jwt]" in records[1]


# --------------------------------------------------------------------------- properties (hypothesis)

def make_secrets(rng: random.Random) -> list[tuple[str, str]]:
    """(text to plant, secret that must not survive), fresh random values each time."""
    password = rand(rng, 14)
    url_password = rand(rng, 12)
    bearer = rand(rng, 30)
    schema = "schema_" + rand(rng, 10, string.ascii_lowercase)
    pem_body = rand(rng, 40)
    email = f"{rand(rng, 8, string.ascii_lowercase)}.{rand(rng, 5, string.ascii_lowercase)}@{rand(rng, 6, string.ascii_lowercase)}.example.com"
    card = luhn_card(rng, rng.choice("3456"), rng.choice((15, 16)))
    ip = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
    jwt = "eyJ" + rand(rng, 20, string.ascii_letters + "_-") + ".eyJ" + rand(rng, 30) + "." + rand(rng, 25)
    aws = "AKIA" + rand(rng, 16, string.ascii_uppercase + string.digits)
    github = "ghp_" + rand(rng, 36)
    slack = "xoxp-" + rand(rng, 20, string.digits + "-") + rand(rng, 8)
    gcp = "AIza" + rand(rng, 35)
    return [
        (f"postgres://loader:{url_password}@warehouse.internal:5432/db", url_password),
        (f"Authorization: Bearer {bearer}", bearer),
        (f"SELECT id, amount FROM {schema}.payments", schema),
        (f"-----BEGIN PRIVATE KEY-----\n{pem_body}\n-----END PRIVATE KEY-----", pem_body),
        (email, email),
        (card if rng.random() < 0.5 else " ".join(card[i:i + 4] for i in range(0, 16, 4)) if len(card) == 16 else card,
         card[-6:]),
        (ip, ip),
        (jwt, jwt),
        (aws, aws),
        (github, github),
        (slack, slack),
        (gcp, gcp),
        (f"password={password}", password),
    ]


json_leaves = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=12)
json_docs = st.recursive(json_leaves, lambda children: st.lists(children, max_size=4)
                         | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)


def plant(document, planted, path: list[int]):
    """Put `planted` somewhere inside document, following path choices; returns the new document."""
    if isinstance(document, list) and document and path:
        index = path[0] % (len(document) + 1)
        if index < len(document):
            document[index] = plant(document[index], planted, path[1:])
        else:
            document.append(planted)
        return document
    if isinstance(document, dict) and document and path:
        keys = list(document)
        index = path[0] % (len(keys) + 1)
        if index < len(keys):
            document[keys[index]] = plant(document[keys[index]], planted, path[1:])
        else:
            document["note"] = planted
        return document
    return {"wrapped": document, "value": planted}


TARGET_FIELDS = ("keyword_args_json", "pos_args_json", "output", "error", "label", "value", "location",
                 "target_id", "search_term", "session_id", "resource_key", "host_name", "properties", "user")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=json_docs, seed=st.integers(0, 2**32), path=st.lists(st.integers(0, 50), max_size=5),
       field=st.sampled_from(TARGET_FIELDS), as_json=st.booleans(), under_key=st.booleans(),
       prefix=st.text(max_size=10), suffix=st.text(max_size=10))
def test_planted_secrets_never_reach_any_output(scrubber, document, seed, path, field, as_json, under_key,
                                                 prefix, suffix):
    rng = random.Random(seed)
    planted_text, secret = rng.choice(make_secrets(rng))
    if under_key:  # a secret under a sensitive key rather than spotted by its shape
        secret = rand(rng, 16)
        planted_text = {rng.choice(["password", "api_key", "client_secret", "sql", "Authorization"]): secret}
    else:
        planted_text = f"{prefix} {planted_text} {suffix}"
    if field in ("properties", "user") and isinstance(planted_text, dict):
        field = "keyword_args_json"
    if field == "properties":
        event = row(properties={"page": "home", rand(rng, 5): planted_text})
    elif field == "user":
        event = row(user=planted_text.strip())
    elif as_json or isinstance(planted_text, dict):
        event = row(**{field: json.dumps(plant(document, planted_text, path), ensure_ascii=rng.random() < 0.5)})
    else:
        event = row(**{field: planted_text})

    action = UserAction(app="amundsen", user=event["user"], properties=event["properties"],
                        **{name: event[name] for name in scrub.ACTION_TEXT_FIELDS})
    text = json.dumps(event, ensure_ascii=False)
    scrubbed_row = scrub_one(scrubber, json.loads(text))
    scrubber.scrub_action(action)
    scrubbed_text, text_audit = scrubber.scrub_text(text)

    assert secret not in json.dumps(scrubbed_row, ensure_ascii=False)
    assert secret not in str(action) and secret.encode() not in action.SerializeToString()
    assert secret not in scrubbed_text and secret not in " ".join(text_audit)
    assert scrubbed_row["scrubbed_fields"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=json_docs, seed=st.integers(0, 2**32), path=st.lists(st.integers(0, 50), max_size=5),
       field=st.sampled_from(TARGET_FIELDS[:-2]), planted=st.booleans(), noise=st.text(max_size=30))
def test_fast_path_never_hides_what_the_detailed_pass_finds(scrubber, document, seed, path, field, planted, noise):
    rng = random.Random(seed)
    if planted:
        document = plant(document, rng.choice(make_secrets(rng))[0], path)
    event = row(**{field: json.dumps(document) if rng.random() < 0.7 else noise + json.dumps(document)},
                user=rng.choice(["user1", "a@b.example", noise]), properties={noise: noise})
    thorough = Scrubber(scrubber.policy)
    for rules in [thorough._default_rules, *thorough._rules_by_app.values()]:
        rules.prefilter.first_hit = lambda text, position: position if position < len(text) else -1
    fast = scrub_one(scrubber, json.loads(json.dumps(event)))
    slow = scrub_one(thorough, json.loads(json.dumps(event)))
    assert fast == slow


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=json_docs, seed=st.integers(0, 2**32), path=st.lists(st.integers(0, 50), max_size=5))
def test_scrubbing_is_idempotent(scrubber, document, seed, path):
    rng = random.Random(seed)
    planted = " ".join(text for text, _ in make_secrets(rng))
    first = scrub_one(scrubber, row(keyword_args_json=json.dumps(plant(document, planted, path)), error=planted))
    before = json.dumps(first, sort_keys=True)
    assert json.dumps(scrub_one(scrubber, first), sort_keys=True) == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), fields=st.lists(st.sampled_from(TARGET_FIELDS[:-2]), min_size=2, max_size=4,
                                                  unique=True), at_start=st.booleans())
def test_fast_path_finds_secrets_in_several_fields_of_one_event(scrubber, seed, fields, at_start):
    """The fast path's one search over all fields joined must find every field that needs the detailed
    pass, including a secret key at the very start of a later field."""
    rng = random.Random(seed)
    values = {}
    for field in fields:
        text, _ = rng.choice(make_secrets(rng) + [(f"password={rand(rng, 12)}", None), (f"sql: select {rand(rng, 6)}", None)])
        values[field] = text if at_start else f"note {text}"
    event = row(**{f: v for f, v in values.items() if f != "properties"},
                properties={"query": values["properties"]} if "properties" in values else {})
    thorough = Scrubber(scrubber.policy)
    for rules in [thorough._default_rules, *thorough._rules_by_app.values()]:
        rules.prefilter.first_hit = lambda text, position: position if position < len(text) else -1
    assert scrub_one(scrubber, json.loads(json.dumps(event))) == scrub_one(thorough, json.loads(json.dumps(event)))


def test_a_key_at_the_start_of_a_later_field_is_found(tmp_path):
    """The fast path searches all fields joined; a key rule's key that opens a later field must still be
    seen when an earlier field also needs the detailed pass."""
    scrubber = Scrubber(load_policy(policy_file(tmp_path, "key_rules: {pins: {action: mask, keys: [pin]}}"),
                                    hmac_key=KEY))
    scrubbed = scrub_one(scrubber, row(keyword_args_json='{"pin": "1234"}', output="pin: 5678"))
    assert "1234" not in scrubbed["keyword_args_json"] and "5678" not in scrubbed["output"]


def test_key_hints_match_whole_keys_only(scrubber):
    """`bigquery://` is not the key `query`, and a kept property key does not wake the detailed pass;
    the same words as keys still do."""
    clean = row(app="code-search", properties={"query": "context:global http.Client", "warehouse": "bigquery"},
                keyword_args_json='{"table_key": "bigquery://analytics.ops/orders"}')
    assert scrub_one(scrubber, dict(clean))["scrubbed_fields"] == []
    secret = scrub_one(scrubber, row(app="amundsen", error="retry failed", output="query: select * from orders"))
    assert "select" not in secret["output"] and secret["error"] == "retry failed"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), size=st.integers(1, 12), noise=st.lists(st.text(max_size=20), min_size=12, max_size=12))
def test_a_batch_scrubbed_as_columns_equals_each_row_scrubbed(scrubber, seed, size, noise):
    """The pipeline scrubs a batch column by column (one prefilter search per column); every row must
    come out exactly as it does between clean neighbours: the same values and audit, whatever its neighbours hold
    (secrets, clean text, non-ASCII noise, apps with their own rules, emails as users, long fields)."""
    rng = random.Random(seed)
    events = []
    for index in range(size):
        field = rng.choice(TARGET_FIELDS)
        text = rng.choice([noise[index], f"{noise[index]} {rng.choice(make_secrets(rng))[0]}", "",
                           json.dumps({"query": "select 1 from t", "query_id": noise[index]}), "x" * 9000])
        event = row(app=rng.choice(["amundsen", "bi", "code-search"]), user=rng.choice(["ann", "bo@example.com"]),
                    scrubbed_fields=[])
        if field == "properties":
            event["properties"] = {rng.choice(["page", "query", "password", noise[index] or "k"]): text}
        elif field != "user":
            event[field] = text
        events.append(event)
    expected = [scrub_one(scrubber, json.loads(json.dumps(event))) for event in events]
    names = list(events[0])
    columns = {name: [json.loads(json.dumps(event))[name] for event in events] for name in names}
    scrubber.scrub_columns(columns)
    assert [dict(zip(names, values)) for values in zip(*columns.values())] == expected
