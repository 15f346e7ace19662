"""The evaluation engine: outcomes equal a direct computation, per-chunk seeds, the skipping rule, sharding
and resuming give one process's numbers, mixed precision re-check, reliability checks."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from robustarch import attacks as ra
from robustarch.errors import RobustarchError
from robustarch.evaluation import AttackPlan, DataSource, Engine, ModelRef, chunk_seed, may_skip
from robustarch.evaluation.checks import model_checks, store_checks
from robustarch.store import Store
from test_store import make_key, random_outcomes

TINY_RESNET = ModelRef.zoo("resnet18", overrides={"width": 4}, random_init=True)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def source(n: int = 10, seed: int = 0, scale: float = 1.0) -> DataSource:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g) * scale
    y = torch.randint(0, 10, (n,), generator=g)
    return DataSource("cifar10", "CIFAR-10", f"gen:{seed}:{n}", Pairs(x, y), list(range(100, 100 + n)), 10)


def plans(*specs) -> list[AttackPlan]:
    return [AttackPlan(f"{name}-{profile}", ra.create(name, profile, **kw)) for name, profile, kw in specs]


def engine(store: Store, **kw) -> Engine:
    kw.setdefault("batch_size", 4)
    return Engine(store, device="cpu", prepare=False, **kw)


def run_all(eng: Engine, data: DataSource, attack_plans, model=TINY_RESNET):
    job = eng.plan(data, model, attack_plans)
    eng.run(job)
    return job


def test_chunk_seed_is_stable_and_distinct():
    assert chunk_seed("0123456789abcdef", 0) == chunk_seed("0123456789abcdef", 0)
    seeds = {chunk_seed(r, c) for r in ("a" * 16, "b" * 16) for c in range(50)}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)
    # the documented definition: the top 63 bits of sha256("<run_id>/<chunk>")
    digest = hashlib.sha256(b"0123456789abcdef/3").digest()
    assert chunk_seed("0123456789abcdef", 3) == int.from_bytes(digest[:8], "big") >> 1


def test_outcomes_equal_a_direct_computation(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    data = source()
    attack_plans = plans(("fgsm", "paper", {}), ("rfgsm", "paper", {}), ("pgd", "standard", {"steps": 3}))
    eng = engine(store)
    job = run_all(eng, data, attack_plans)
    assert eng.finish(job) == []
    model = job.model
    x_all = torch.stack([data.data[i][0] for i in range(len(data))])
    y_all = torch.tensor([data.data[i][1] for i in range(len(data))])
    for r in job.runs:
        got = store.examples(r.run_id)
        assert [o.example_id for o in got] == data.example_ids
        for c in range(r.key.n_chunks):
            a, b = r.key.chunk_bounds(c)
            x, y = x_all[a:b], y_all[a:b]
            with torch.no_grad():
                logits = model(x)
            top5 = logits.topk(5, 1).indices
            c1, c5 = logits.argmax(1) == y, (top5 == y[:, None]).any(1)
            if r.is_clean:
                adv = x
            else:
                adv = r.plan.attack(
                    model, x, y, generator=torch.Generator().manual_seed(chunk_seed(r.run_id, c))
                )
            with torch.no_grad():
                la = model(adv)
            a1, a5 = la.argmax(1) == y, (la.topk(5, 1).indices == y[:, None]).any(1)
            if r.key.adv_metric == "robust":
                a1, a5 = a1 & c1, a5 & c5
            d = (adv - x).flatten(1)
            for k, o in enumerate(got[a:b]):
                assert o.label == int(y[k]) and o.clean_pred == int(logits[k].argmax())
                assert (o.clean_correct1, o.clean_correct5) == (bool(c1[k]), bool(c5[k]))
                assert o.adv_pred == int(la[k].argmax())
                assert (o.adv_correct1, o.adv_correct5) == (bool(a1[k]), bool(a5[k]))
                assert o.linf == pytest.approx(float(d[k].abs().max()), abs=0) and o.attacked
                assert o.l2 == pytest.approx(float(d[k].norm()), rel=1e-6)
    res = {r.attack: r for r in store.results()}
    assert res["pgd"].adv_metric == "robust" and res["fgsm"].adv_metric == "perturbed"
    assert res["fgsm"].linf_max == pytest.approx(0.007, abs=1e-7)
    assert res["pgd"].linf_max <= 8 / 255 + 1e-7


def test_skipping_only_where_the_result_is_defined(tmp_path):
    assert may_skip(ra.create("stepll"), "robust") and may_skip(ra.create("fgsm"), "robust")
    assert may_skip(ra.create("pgd", random_start=False), "robust")
    assert not may_skip(ra.create("pgd", random_start=True), "robust")  # random draws depend on the batch
    assert not may_skip(ra.create("rfgsm"), "robust") and not may_skip(ra.create("square"), "robust")
    assert not may_skip(ra.create("fgsm"), "perturbed")  # the study's metric: f(x_adv) for every example
    store = Store(tmp_path / "s.sqlite")
    data = source(n=12, seed=3)
    eng = engine(store, batch_size=6)
    job = run_all(eng, data, plans(("stepll", "standard", {"steps": 2}), ("fgsm", "paper", {})))
    clean = store.examples(job.runs[0].run_id)
    stepll = store.examples(job.runs[1].run_id)
    fgsm = store.examples(job.runs[2].run_id)
    assert job.runs[1].skip and not job.runs[2].skip
    assert all(o.attacked for o in fgsm)
    skipped = [o for o in stepll if not o.attacked]
    assert skipped and len(skipped) == sum(not o.clean_correct5 for o in clean)
    for o in skipped:
        assert not o.adv_correct1 and not o.adv_correct5 and o.linf == 0 and o.adv_pred == o.clean_pred
    # the attacked examples got exactly the attack on their sub-batch
    model, attack = job.model, job.runs[1].plan.attack
    for c in range(2):
        rows = [(k, o) for k, o in enumerate(stepll[6 * c : 6 * c + 6]) if o.attacked]
        idx = [6 * c + k for k, _ in rows]
        x = torch.stack([data.data[i][0] for i in idx])
        y = torch.tensor([data.data[i][1] for i in idx])
        adv = attack(model, x, y, generator=torch.Generator().manual_seed(chunk_seed(job.runs[1].run_id, c)))
        with torch.no_grad():
            pred = model(adv).argmax(1)
        assert [o.adv_pred for _, o in rows] == pred.tolist()


def test_shards_and_resumes_give_one_process_numbers(tmp_path):
    data = source(n=9, seed=1)
    attack_plans = plans(("rfgsm", "paper", {}), ("pgd", "standard", {"steps": 2}))
    single = Store(tmp_path / "single.sqlite")
    ref_job = run_all(engine(single), data, attack_plans)
    sharded = Store(tmp_path / "sharded.sqlite")
    for rank in (1, 0):  # any order
        job = run_all(engine(sharded, rank=rank, world_size=2), data, attack_plans)
        assert {c for r in job.runs for c in sharded.committed_chunks(r.run_id)} >= {rank}
    resumed = Store(tmp_path / "resumed.sqlite")
    run_all(engine(resumed, rank=2, world_size=3), data, attack_plans)  # a crash after chunk 2 only
    run_all(engine(resumed), data, attack_plans)  # the re-run fills in the rest
    for store in (sharded, resumed):
        for r in ref_job.runs:
            assert store.examples(r.run_id) == single.examples(r.run_id)
            assert store.finish_run(r.run_id)


def test_mixed_precision_is_identified_and_rechecked(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    eng = engine(store, dtype="amp-bfloat16")
    job = run_all(eng, source(n=4), plans(("fgsm", "standard", {})))
    assert eng.finish(job) == []
    model_checks(eng, job)
    res = {r.attack: r for r in store.results()}
    assert res["fgsm"].dtype == "amp-bfloat16"
    assert (
        res["fgsm"].run_id
        != job.runs[1].key.__class__(**{**dataclasses.asdict(job.runs[1].key), "dtype": "float32"}).run_id
    )
    flag = next(f for f in res["fgsm"].flags if f.check == "amp_recheck")
    assert 0.0 <= flag.value <= 1.0 and flag.status in ("ok", "warn")


def test_model_checks_catch_the_normalized_input_flaw(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    eng = engine(store)
    job = run_all(
        eng, source(n=4), plans(("fgsm", "paper", {}), ("fgsm", "paper", {"emulate_normalized_inputs": True}))
    )
    eng.finish(job)
    model_checks(eng, job)
    honest, flawed = job.runs[1].run_id, job.runs[2].run_id
    eps0 = {rid: next(f for f in store.flags(rid) if f.check == "eps0_identity") for rid in (honest, flawed)}
    assert eps0[honest].status == "ok" and eps0[honest].value == 0.0
    assert eps0[flawed].status == "fail" and eps0[flawed].value > 0.05  # the clamp in normalized space
    assert next(f for f in store.flags(honest) if f.check == "noise_baseline").status in ("ok", "warn")
    assert (
        next(f for f in store.flags(job.runs[0].run_id) if f.check == "deterministic_forward").status == "ok"
    )
    # idempotent: a second pass keeps one flag per check
    model_checks(eng, job)
    assert len(store.flags(flawed)) == len({f.check for f in store.flags(flawed)})


def _fabricate(store: Store, attack: str, params: dict, adv_correct: int, linf: float, n: int = 20) -> str:
    key = make_key(attack=attack, attack_params=params, n_planned=n, chunk_size=n)
    rid = store.begin_run(key, {})
    outs = [
        dataclasses.replace(o, clean_correct1=True, adv_correct1=i < adv_correct, linf=linf, attacked=True)
        for i, o in enumerate(random_outcomes(range(n), 0))
    ]
    store.commit_chunk(rid, 0, outs)
    store.finish_run(rid)
    return rid


def test_store_checks_flag_what_is_wrong(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    fgsm = _fabricate(store, "fgsm", {"eps": 0.03}, 10, 0.03)
    pgd_weak = _fabricate(store, "pgd", {"eps": 0.03, "alpha": 0.01, "steps": 10}, 14, 0.03)
    sweep = [
        _fabricate(store, "pgd", {"eps": e, "alpha": e / 4, "steps": 10, "random_start": True}, k, e)
        for e, k in ((0.01, 12), (0.02, 15), (0.6, 4))
    ]
    over = _fabricate(store, "rfgsm", {"eps": 0.01, "alpha": 0.005, "steps": 1}, 5, 0.02)
    unused = _fabricate(store, "stepll", {"eps": 0.3, "alpha": 0.007, "steps": 10}, 5, 0.07)
    assert store_checks(store) > 0
    flag = {r.run_id: {f.check: f for f in r.flags} for r in store.results()}
    assert flag[fgsm]["budget"].status == "ok"
    assert flag[pgd_weak]["iterative_vs_one_step"].status == "warn"  # 70% vs FGSM's 50%
    assert flag[sweep[1]]["monotone_eps"].status == "warn"  # rose from 60% to 75%
    assert flag[sweep[2]]["monotone_eps"].status == "ok"
    assert flag[sweep[2]]["large_eps"].status == "warn"  # 20% left at eps 0.6
    assert flag[sweep[2]]["iterative_vs_one_step"].status == "ok"  # 20% <= R-FGSM's 25%
    assert flag[over]["budget"].status == "warn" and "exceeds" in flag[over]["budget"].detail
    assert flag[unused]["budget"].status == "warn" and "never binds" in flag[unused]["budget"].detail


def test_bad_inputs_are_refused(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(RobustarchError, match=r"outside \[0,1\]"):
        run_all(engine(store), source(n=4, scale=2.0), plans(("fgsm", "paper", {})))
    bad_labels = dataclasses.replace(source(n=4), num_classes=2)
    with pytest.raises(RobustarchError, match="classes"):
        run_all(engine(store), bad_labels, plans(("fgsm", "paper", {})))
    with pytest.raises(RobustarchError, match="no examples"):
        run_all(engine(store), source(n=0), plans(("fgsm", "paper", {})))
    with pytest.raises(RobustarchError, match="batch size"):
        Engine(store, batch_size=0)
    with pytest.raises(RobustarchError, match="dtype"):
        Engine(store, dtype="float8")
    with pytest.raises(RobustarchError, match="CUDA is not available"):
        Engine(store, device="cuda:3") if not torch.cuda.is_available() else pytest.skip("has CUDA")
