"""Bad input to `ablate run`/`status`: one line naming the problem and the fix, exit status 2,
nothing written to any store; and no password in any output."""
import dataclasses

import pytest

from conftest import ablate, assert_one_line_error
from runners.train.config import TrainConfig
from test_study import SMOKE


@pytest.mark.parametrize("content,fragments", [
    ("name: x\nmodel: {depth: 21}\n", ["model", "depth must be 6n+2 for basic blocks (nearest: 20, 26)"]),
    ("name: x\nmodel: {depth: 20}\nbogus: 1\n", ["unknown field(s) bogus"]),
    ("name: x\nmodel: {depth: 20}\ntrain: {epochs: three}\n", ["train.epochs must be an int"]),
    ("name: x\nmodel: {depth: 20}\ntrain: {lr: 0.1, colour: red}\n", ["train: unknown field(s) colour"]),
    ("name: x\ndataset: {name: /nowhere/data}\nmodel: {depth: 20}\n", ["/nowhere/data", "ImageFolder"]),
    ("name: x\nmodel: {depth: 20, shortcut: D}\n", ["shortcut must be one of none, A, B, C"]),
    ("name: x\nmodel: {depth: 20}\nseeds: [0, 0]\n", ["seeds must be a list of distinct integers"]),
    ("name: x\nmodel: {depth: 20\n", ["not valid YAML"]),
    ("name: x\nmodel: {depth: !!python/object/apply:os.system [echo hi]}\n", ["not valid YAML"]),
    ("name: x\nmodel: {depth: 20}\nsearch: {trials_per_variant: 2, space: {lr: {low: 1, high: 0.1}}}\n",
     ["search.space.lr"]),
    # A "billion laughs" alias bomb, merge keys and duplicate keys are refused by the loader.
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nname: x\nmodel: {depth: 20}\n", ["aliases", "line 2"]),
    ("base: &b {depth: 20}\nname: x\nmodel: {<<: *b}\n", ["not valid YAML"]),
    ("name: x\nmodel: {depth: 20}\ntrain: {epochs: 2}\ntrain: {epochs: 3}\n", ["duplicate key 'train'", "line 4"]),
    ("name: " + "n" * 500 + "\nmodel: {depth: 20}\n", ["name must be a word of at most 64", "..."]),
    ("name: x\nmodel: {depth: 20}\n" + "#" * 300_000 + "\n", ["too large for a spec"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", ["not a UTF-8 text file"]),
    ("name: x\nmodel: {depth: 20}\ntrain: {lr: " + "9" * 400 + "x}\n", ["train.lr must be a float", "..."]),
])
def test_bad_specs_fail_in_one_line_and_create_nothing(results, tmp_path, content, fragments):
    spec = tmp_path / "bad.yaml"
    spec.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = ablate("run", spec)
    assert_one_line_error(out, "bad.yaml", *fragments)
    # Quoted values are cut short: what is left is the path, our own text and the allowed fields
    # (which grow with the recipe: not counted here).
    allowed = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    assert len(out.stderr.replace(str(spec), "").replace(allowed, "")) < 250
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


def test_bad_overrides_and_missing_files_fail_in_one_line(results):
    assert_one_line_error(ablate("run", "ablations/nope.yaml"), "nope.yaml not found")
    assert_one_line_error(ablate("run", SMOKE, "--set", "train.epochs"), "expected key.path=value")
    assert_one_line_error(ablate("run", SMOKE, "--set", "model.depth=21"), "depth must be 6n+2")
    assert_one_line_error(ablate("status", SMOKE), "ablate run")
    assert not results.exists() or not any(results.rglob("*"))


@pytest.mark.parametrize("args,fragments", [
    (["--set", "model.width=0.01"], ["width 0.01 leaves the cifar stem with no channel"]),
    (["--set", "train.momentum=-0.9"], ["train.momentum must be >= 0"]),
    (["--set", "train.weight_decay=-1e-4"], ["train.weight_decay must be >= 0"]),
    (["--set", "train.lr=.nan"], ["train.lr must be a finite number"]),
    (["--checkpoint-dir", "/proc/x"], ["checkpoint directory /proc/x/smoke is not writable"]),
    (["--tracking-uri", "file:/nowhere/mlruns"], ["MLflow file store /nowhere/mlruns"]),
    (["--attempts", "0"], ["--attempts must be at least 1"]),
])
def test_values_that_would_fail_inside_a_trial_are_refused_before_anything_is_written(results, args, fragments):
    assert_one_line_error(ablate("run", SMOKE, *args), *fragments)
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


def test_a_subset_larger_than_the_data_leaves_no_file_behind(results, tmp_path):
    from PIL import Image
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (32, 32), (i * 90, 20, 40)).save(tmp_path / "folder" / split / cls / f"{i}.png")
    out = ablate("run", SMOKE, "--set", f"dataset.name={tmp_path / 'folder'}", "--set", "dataset.subset=100",
                 "--set", "dataset.val_size=1")
    assert_one_line_error(out, "subset")
    assert not results.exists() or not [p for p in results.rglob("*") if p.is_file() and "cache" not in p.parts]


@pytest.mark.parametrize("loader", ["memory", "stream"])
@pytest.mark.parametrize("odd", ["an empty b.jpg", "a directory b.jpg"])
def test_an_entry_named_like_an_image_that_is_none_is_one_line_naming_it(results, tmp_path, odd, loader):
    """In a class folder, what is named like an image (.jpg, .png, ...) must be one; anything named
    otherwise (`notes.txt`) is passed over. A directory `b.jpg` stops the run before anything is
    written, in one line naming it, whichever loader reads the folder. An empty `b.jpg` does so
    too where the folder is decoded up front (memory); a streamed folder is read as it trains, so
    there each trial that reads it fails, its error the same one line (torch's DataLoader worker
    traceback taken off it)."""
    from PIL import Image
    from runners.train.images import list_imagefolder
    folder = tmp_path / "folder"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (folder / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (i * 60, 20, 40)).save(folder / split / cls / f"{i}.png")
    (folder / "train" / "a" / "notes.txt").write_text("where these came from")
    bad = folder / "train" / "b" / "b.jpg"
    bad.mkdir() if "directory" in odd else bad.touch()
    if "empty" in odd:
        assert [f.name for f in list_imagefolder(folder)["train"]["a"]] == ["0.png", "1.png", "2.png", "3.png"]
    out = ablate("run", SMOKE, "--set", f"dataset.name={folder}", "--set", "dataset.subset=9",
                 "--set", "dataset.val_size=1", "--set", f"dataset.loader={loader}", "--workers", "1")
    if "directory" in odd:
        assert_one_line_error(out, f"{bad} is a directory named like an image", "rename it")
    elif loader == "memory":
        assert_one_line_error(out, f"cannot decode {bad}: the file is empty; remove it")
    else:
        assert out.returncode == 1 and "Traceback" not in out.stderr and "Caught" not in out.stderr, out.stderr
        failed = [line for line in out.stderr.splitlines() if "failed (attempt 1 of 3)" in line]
        assert len(failed) == 4 and all(f"ConfigError: cannot decode {bad}: the file is empty" in line
                                        for line in failed), out.stderr
        return
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


def test_passwords_never_survive_redaction_in_any_position():
    import random
    import string

    from runners.database import canonical_url
    from runners.errors import first_line, redact
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "@:/?#%!$&*()-_=+;,.~"
    for _ in range(2000):
        pw = "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 20)))
        user = rng.choice(["", "postgres", "u.ser"])
        host = rng.choice(["127.0.0.1:5432", "db.example", "[::1]:5432"])
        query_pw = "".join(c for c in pw if c not in "&#")
        urls = [f"postgresql://{user}:{pw}@{host}/db",
                f"postgresql+psycopg://{user}:{pw}@{host}/db?sslmode=require",
                f"postgresql://{user}@{host}/db?password={query_pw}",
                f"postgresql://{host}/db?sslmode=disable&password={query_pw}&x=1"]
        for url in urls:
            secret = query_pw if "password=" in url else pw
            for text in (url, canonical_url(url), f"cannot connect to {url}: refused",
                         f"cannot connect to {canonical_url(url)}: refused"):
                assert secret not in redact(text), (url, redact(text))
            assert secret not in first_line(RuntimeError(f"error at {url}\nmore"))
    assert redact("postgresql://:pw@h/db") == "postgresql://:***@h/db"
    assert redact("postgresql://h/db?password=pw") == "postgresql://h/db?password=***"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.parametrize("storage", ["postgresql://:s3cr3tpw@127.0.0.1:1/db",
                                     "postgresql://127.0.0.1:1/db?password=s3cr3tpw",
                                     "postgresql://postgres:s3cr@tpw@127.0.0.1:1/db"])
def test_a_password_in_any_position_is_never_printed(results, storage):
    out = ablate("status", SMOKE, "--storage", storage, timeout=60)
    assert_one_line_error(out, "cannot reach the Optuna storage", "***")
    assert "s3cr" not in out.stderr + out.stdout and "tpw" not in out.stderr + out.stdout


WIDE = "[" + ", ".join(str(1 + i / 1000) for i in range(1000)) + "]"


@pytest.mark.parametrize("args,fragments", [
    (["--set", "seeds=1000000000"], ["1,000,000,000 seeds", "MAX_SEEDS in runners/study/spec.py"]),
    (["--set", "seeds=[0, -1]"], ["seeds must lie in [0, 2**32)", "-1"]),
    (["--set", f"seeds=[{2**64}]"], ["seeds must lie in [0, 2**32)"]),
    (["--set", "train.seed=-1"], ["seed must be a number in [0, 4294967296)"]),
    (["--set", "dataset.split_seed=4294967296"], ["split_seed must be a number in [0, 4294967296)"]),
    (["--set", "search={trials_per_variant: 1000000000, space: {lr: {low: 0.01, high: 0.1}}}"],
     ["trials_per_variant 1,000,000,000", "MAX_TRIALS_PER_VARIANT"]),
    (["--set", "search={trials_per_variant: 2, startup_trials: many, space: {lr: {low: 0.01, high: 0.1}}}"],
     ["search.startup_trials must be an integer"]),
    (["--set", "model.depth=6000002"], ["depth must be a number in [1, 2000]", "option(high=...)"]),
    (["--set", "model.stages=[400, 400, 400]", "--set", "model.depth=null"], ["1,200 blocks in one net", "MAX_BLOCKS"]),
    (["--set", f"model.width={WIDE}", "--set", f"model.shortcut_scale={WIDE}", "--set", "model.shortcut=scale"],
     ["1,000,000 variants", "MAX_VARIANTS"]),
    (["--set", f"model.width={WIDE[:3000]}]", "--set", "seeds=20"], ["cells, above the limit of 10,000", "MAX_CELLS"]),
    (["--set", "train.lr=1e300"], ["lr must be a number <= 10000.0, got 1e+300", "raise it there"]),
    (["--set", "train.momentum=2"], ["momentum must be a number in [0, 1]"]),
    (["--set", "model.width=1e300"], ["width must be a number <= 64"]),
    (["--set", "description={a: 1}"], ["description must be text"]),
])
def test_sizes_and_values_past_their_documented_bounds_are_refused_at_once(results, args, fragments):
    """Each bound is checked before anything is built or written, so a spec a million times too
    large is one line (under a second; not timed here), never a process that fills the memory."""
    out = ablate("run", SMOKE, "--dry-run", *args)
    assert_one_line_error(out, *fragments)
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


@pytest.mark.parametrize("line,fragments", [
    ("description: !!binary aGVsbG8=", ["description is a bytes", "strings, numbers, booleans"]),
    ("description: !!set {a, b}", ["description is a set"]),
    ("description: !!timestamp 2024-05-01", ["description is a date"]),
    ("description: " + "[" * 20000 + "]" * 20000, ["nested more than 32 levels"]),
])
def test_yaml_values_are_the_plain_types_a_spec_allows(results, tmp_path, line, fragments):
    spec = tmp_path / "tagged.yaml"
    spec.write_text(f"name: x\nmodel: {{depth: 8}}\n{line}\n")
    assert_one_line_error(ablate("run", spec), "tagged.yaml", *fragments)
    assert not results.exists() or not any(results.rglob("*"))


def test_an_implicit_date_stays_text():
    from runners.yaml_input import load_yaml
    assert load_yaml("description: 2024-05-01\nwhen: 2024-05-01 10:00:00\n", "x") == {
        "description": "2024-05-01", "when": "2024-05-01 10:00:00"}
