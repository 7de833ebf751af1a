"""Secrets in store URLs: every connection-string form libpq and SQLAlchemy accept is read as
they read it and masked wherever the lab shows, stores or hands it on."""
import random
import string

import pytest
import sqlalchemy

from conftest import ablate, assert_one_line_error
from test_study import SMOKE

from runners.database import canonical_url
from runners.errors import first_line, redact

SECRET = "Zq7s3cr3tXw"


@pytest.mark.parametrize("text,shown", [
    # libpq keyword/value strings, quoted or not, spaces around '=' or not
    ("host=db port=5432 user=u password=PW dbname=x", "host=db port=5432 user=u password=*** dbname=x"),
    ("host=db password='a b\\' c' sslkey=/keys/u.key", "host=db password=*** sslkey=/keys/u.key"),
    ("connect failed: password = PW", "connect failed: password = ***"),
    # query parameters: the secret ones masked, paths kept
    ("postgresql://h/db?sslmode=verify-full&sslpassword=PW&sslkey=/k/u.key",
     "postgresql://h/db?sslmode=verify-full&sslpassword=***&sslkey=/k/u.key"),
    ("postgresql:///db?host=/run/postgresql&user=u&password=PW", "postgresql:///db?host=/run/postgresql&user=u&password=***"),
    # userinfo holding both '@' and '?', a dialect+driver scheme, an HTTP tracking server
    ("postgresql://u:p@ss?w@db:5432/x?sslmode=require", "postgresql://u:***@db:5432/x?sslmode=require"),
    ("postgresql+psycopg://u:p/w:d@db/x", "postgresql+psycopg://u:***@db/x"),
    ("http://user:PW@mlflow.example:5000", "http://user:***@mlflow.example:5000"),
])
def test_every_connection_string_form_is_masked(text, shown):
    assert redact(text) == shown


def test_raw_passwords_with_at_and_question_marks_are_read_as_libpq_reads_them():
    """canonical_url gives SQLAlchemy the password and the host the user meant: the host an error
    names is never part of the password."""
    rng = random.Random(1)
    # No '%': `%AE` in a URL is percent-encoding, raw or not (the user's own encoding is kept).
    alphabet = string.ascii_letters + string.digits + "@:/?#!$*()-_=+;,.~"
    for _ in range(1000):
        pw = "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 20)))
        for host in ("db.example", "127.0.0.1", "[::1]"):
            for url in (f"postgresql://u:{pw}@{host}:5432/db", f"postgresql+psycopg://u:{pw}@{host}/db?sslmode=require"):
                parsed = sqlalchemy.engine.make_url(canonical_url(url))
                assert (parsed.password, parsed.host) == (pw, host.strip("[]")), url
                assert pw not in redact(url) and pw not in redact(canonical_url(url))
                assert pw not in first_line(RuntimeError(f"connection to {canonical_url(url)} failed"))


def test_a_keyword_value_storage_string_is_refused_in_one_line_without_its_password(results):
    out = ablate("status", SMOKE, "--storage", f"host=127.0.0.1 port=1 user=postgres password={SECRET}")
    assert_one_line_error(out, "keyword/value", "postgresql://")
    assert SECRET not in out.stdout + out.stderr
    assert not results.exists() or not any(results.rglob("*"))


@pytest.mark.parametrize("uri", [f"postgresql://postgres:{SECRET[:4]}@?{SECRET[4:]}@127.0.0.1:1/db",
                                 f"http://user:{SECRET}@127.0.0.1:1"])
def test_figures_reads_the_tracking_uri_as_run_does(results, uri):
    """A raw password holding '@' and '?' in --tracking-uri or MLFLOW_TRACKING_URI: `ablate
    figures` names the right host (no part of the password) and masks the rest."""
    for args, env in ((["--tracking-uri", uri], {}), ([], {"MLFLOW_TRACKING_URI": uri})):
        out = ablate("figures", SMOKE, *args, env=env, timeout=60)
        assert_one_line_error(out, "cannot reach the MLflow tracking store", "127.0.0.1")
        for part in (SECRET[:4], SECRET[4:]):
            assert part not in out.stdout + out.stderr


# -- a planted secret, everywhere a study leaves text --------------------------------------------------
PARTS = ("Pl4ntedZq7", "Xw9s3cr3tK")  # a password "Pl4ntedZq7@?Xw9s3cr3tK": raw '@' and '?' in it
FORMS = {  # the connection-string forms README's Scale-out documents
    "userinfo, raw '@' and '?'": "postgresql://postgres:{0}@?{1}@127.0.0.1:5432/{db}",
    "?password=": "postgresql://postgres@127.0.0.1:5432/{db}?sslmode=disable&password={0}{1}",
    "dialect+driver": "postgresql+psycopg://postgres:{0}{1}@127.0.0.1:5432/{db}",
}


def _postgres_up() -> bool:
    try:
        import psycopg
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(240)
@pytest.mark.skipif(not _postgres_up(), reason="PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
@pytest.mark.parametrize("form", list(FORMS))
def test_a_planted_secret_is_nowhere_a_study_leaves_text(results, monkeypatch, form):
    """The password in the Optuna storage URL (--storage) and in the MLflow tracking URI
    ($MLFLOW_TRACKING_URI): not in what `ablate run` prints, the files it writes (results/:
    checkpoints, artifacts, logs), what it stores in either database (Optuna's attributes,
    MLflow's params, tags and runs: every row, as pg_dump writes it) nor on its workers'
    command lines. (The local server uses trust authentication, so the password is accepted.)"""
    import subprocess
    import uuid

    import psycopg

    from runners.study import host
    names = [f"ablate_secret_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        for n in names:
            conn.execute(f'CREATE DATABASE "{n}"')
    storage, tracking = (FORMS[form].format(*PARTS, db=n) for n in names)
    small = ["--set", "model.shortcut=A", "--set", "seeds=[0]", "--set", "dataset.subset=192",
             "--set", "dataset.val_size=64"]
    argvs = []

    def spawn(plan, command, storage_url, tracking_uri):  # the workers' command lines, nothing run
        argvs.extend(command.argv(plan.gpus, plan.threads) for _ in range(plan.workers))
        return 0

    try:
        monkeypatch.setattr(host, "spawn_workers", spawn)
        spawned = ablate("run", SMOKE, *small, "--storage", storage, "--workers", "2",
                         env={"MLFLOW_TRACKING_URI": tracking})
        monkeypatch.undo()
        monkeypatch.setenv("ABLATE_RESULTS", str(results))
        out = ablate("run", SMOKE, *small, "--storage", storage, env={"MLFLOW_TRACKING_URI": tracking})
        assert out.returncode == 0, out.stderr[-3000:]
        assert len(argvs) == 2
        dumps = [subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", n], capture_output=True,
                                check=True).stdout for n in names]
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            for n in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
    texts = {"printed": (spawned.stdout + spawned.stderr + out.stdout + out.stderr).encode(),
             "argv": "\n".join(" ".join(a) for a in argvs).encode(),
             **{f"database {n}": d for n, d in zip(names, dumps)},
             **{str(p): p.read_bytes() for p in results.rglob("*") if p.is_file()}}
    assert b"study" in texts[f"database {names[1]}"]  # the dump holds the runs it is searched for
    for where, text in texts.items():
        for part in PARTS:
            assert part.encode() not in text, (form, where)
