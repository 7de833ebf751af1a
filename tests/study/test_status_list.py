"""`ablate status` without a spec: every study in the storage, with its progress, from Optuna alone."""
import json

import optuna

from conftest import ablate
from runners.study.storage import open_storage


def _study(path, name, cells, finished):
    storage = open_storage(str(path))
    study = optuna.create_study(study_name=name, storage=storage)
    for k in range(cells):
        study.enqueue_trial({}, user_attrs={"stage": "confirm", "cell": f"v/seed={k}"})
    for _ in range(finished):
        study.tell(study.ask(), 0.1)
    study.ask()  # one running


def test_status_without_a_spec_lists_every_study_with_its_progress(results):
    (results / "optuna").mkdir(parents=True)
    _study(results / "optuna" / "alpha.journal", "alpha", 4, 2)
    _study(results / "optuna" / "beta.journal", "beta", 3, 0)
    out = ablate("status", env={"ABLATE_RESULTS": str(results)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["study", "done", "running", "waiting", "failed", "storage"]
    assert lines[1].split()[:5] == ["alpha", "2/4", "1", "1", "0"]
    assert lines[2].split()[:5] == ["beta", "0/3", "1", "2", "0"]
    doc = json.loads(ablate("status", "--json", env={"ABLATE_RESULTS": str(results)}).stdout)
    assert [(r["study"], r["done"], r["cells"]) for r in doc] == [("alpha", 2, 4), ("beta", 0, 3)]


def test_status_without_a_spec_or_studies_says_how_to_start_one(results):
    out = ablate("status", env={"ABLATE_RESULTS": str(results)})
    assert out.returncode == 0 and "no studies yet" in out.stdout
    assert not results.exists()  # nothing created
