"""`python tests/bench.py --quick`: every benchmark code path on tiny synthetic settings.

No timing is asserted (benchmarks are not tests); the report and the JSON must hold every
section, and the overhead section must confirm that pfl and the plain loop agree bit for bit.
"""

from __future__ import annotations

import json
import os

import bench
import pytest


def test_quick_bench_writes_report_and_results(synthetic_db, tmp_path):
    report, results = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    env_before = os.environ.get("PFL_DATA_DIR")
    rc = bench.main(["--quick", "--skip", "ray", "--data-dir", str(synthetic_db), "--report", str(report),
                     "--results", str(results), "--work", str(tmp_path / "work")])
    assert rc == 0
    assert os.environ.get("PFL_DATA_DIR") == env_before  # later real-data tests must not see synthetic data
    res = json.loads(results.read_text())
    sections = res["sections"]
    assert set(sections) == set(bench.SECTIONS) - {"ray"}
    over = sections["overhead"]["result"]["small model (cnn)"]
    assert over["identical"] is True  # same weights, train loss and per-client metrics
    assert over["ratio_total"] > 0 and len(over["pfl_total_s"]) == 1
    assert len(over["pfl_pickle_total_s"]) == 1  # the pickle-format run beside each repeat
    strat = sections["strategies"]["result"]["runs"]
    assert strat["none"]["ratio_vs_none"] == 1.0 and strat["perfedavg-fo"]["round_median_s"] > 0
    assert strat["none"]["ledger_per_round_s"] > 0  # the ledger hook ran and was timed
    scaling = sections["scaling"]["result"]
    assert [r["clients"] for r in scaling["clients"].values()] == [2, 6]
    assert scaling["dirichlet"]["8"]["clients"] == 8
    mem = sections["memory"]["result"]
    assert mem["peak_rss_mb"] > 50 and mem["clients"] == 6  # measured in a subprocess
    data = sections["data"]["result"]
    assert data["records"] == 6 and data["warm_median_s"] > 0
    fixed = sections["fixed"]["result"]
    assert fixed["trainer_construction_ms"] > 0 and fixed["weights_digest_ms"] > 0
    agree = sections["agreement"]["result"]["settings"]["tiny synthetic"]
    assert [r["seed"] for r in agree["rows"]] == [0]
    row = agree["rows"][0]
    assert set(row) == {"seed", "only_n", *bench.FAST_TOLERANCE}
    for key in bench.FAST_TOLERANCE:
        assert row[key]["diff"] == abs(row[key]["exact"] - row[key]["fast"])
    assert set(row["only_n"]) == {"exact", "fast"}
    text = report.read_text()
    for heading in ("Framework overhead", "8. Fast path agreement", "Strategy cost", "Scaling", "Per-client fixed costs", "4. Data",
                    "5. Memory", "Threads", "Quick mode"):
        assert heading in text
    assert "| yes |" in text  # the overhead table's equivalence column
    assert "Ceiling of the worker processes: the busier of" in text

    # --only re-runs one section and keeps the others from the same machine's results.
    rc = bench.main(["--quick", "--only", "data", "--data-dir", str(synthetic_db), "--report", str(report),
                     "--results", str(results), "--work", str(tmp_path / "work")])
    assert rc == 0
    again = json.loads(results.read_text())["sections"]
    assert set(again) == set(sections)
    assert again["overhead"] == sections["overhead"]


def test_bad_section_name_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--only", "speed"])
    assert exc.value.code == 2
    assert "unknown section 'speed'" in capsys.readouterr().err


def test_list_names_every_section(capsys):
    assert bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in bench.SECTIONS)


def test_agreement_remeasures_one_setting_and_keeps_the_others():
    old = {"tolerance": {"acc": 0.005}, "settings": {"reference": {"rows": [1], "when": "then"},
                                                     "clinical": {"rows": [2], "when": "then"}}}
    new = {"tolerance": {"acc": 0.005}, "settings": {"clinical": {"rows": [3], "when": "now"}}}
    merged = bench.merge_agreement(old, new)
    assert merged["settings"] == {"reference": {"rows": [1], "when": "then"}, "clinical": {"rows": [3], "when": "now"}}
    assert bench.merge_agreement(None, new) == new


def test_bad_agreement_setting_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--only", "agreement", "--agreement", "clinicl"])
    assert exc.value.code == 2
    assert "unknown agreement setting 'clinicl'" in capsys.readouterr().err


@pytest.mark.parametrize("sizes, workers, share", [
    ([1274, 1274, 589], 2, 1863 / 3137),  # the largest two apart, the smallest after the first free
    ([5, 4, 3, 3, 3], 2, 10 / 18),  # largest first: 5+3 and 4+3+3; the best split (9) it misses
    ([7], 2, 1.0),
    ([2, 2, 2, 2], 4, 0.25),
])
def test_busier_share_follows_largest_first_to_the_idle_worker(sizes, workers, share):
    assert bench.busier_share(sizes, workers) == pytest.approx(share)


@pytest.mark.parametrize("sizes, workers, wave, tail", [
    # hospitals: 1,274 and 1,183 side by side, then 680 alone on both cores
    ([1183, 1274, 680], 2, 1274 / 3137, 680 / 3137),
    ([5, 4, 3, 3], 2, 8 / 15, 0.0),  # no left-over client: the busier share as before
    ([7], 2, 0.0, 1.0),
])
def test_spread_shares_put_the_left_over_client_after_the_rest(sizes, workers, wave, tail):
    assert bench.spread_shares(sizes, workers) == pytest.approx((wave, tail))


def test_only_n_marks_a_model_that_calls_every_beat_n():
    base = {"test.global.f1_N.pooled": 0.95, "test.global.f1.mean": 0.3}
    assert bench.only_n({**base, "test.global.f1_S.pooled": 0.0, "test.global.f1_V.pooled": 0.0})
    assert not bench.only_n({**base, "test.global.f1_S.pooled": 0.0, "test.global.f1_V.pooled": 0.01})
    assert not bench.only_n(base)  # no other class reported: nothing to say


def test_a_section_run_alone_keeps_the_report_sections_its_results_file_lacks(synthetic_db, tmp_path):
    """The results file of this machine holds only some sections (another machine's were set
    aside): a run of one section must keep the report's blocks, summary rows and sections-run
    rows of the others, as they were."""
    report, results = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    args = ["--quick", "--data-dir", str(synthetic_db), "--report", str(report), "--results", str(results),
            "--work", str(tmp_path / "work")]
    kept_block = ("## 8. Fast path agreement: final test metrics of trainer=fast against the exact path\n\n"
                  "| seed | x |\n|---|---|\n| 0 | measured elsewhere |\n\n")
    kept_summary = "| fast path agreement with exact, somewhere, 3 seeds | abs diff | worst 0.1 | yes |\n"
    kept_run = "| agreement | 2026-01-01 00:00 | 99 |\n"
    assert bench.main([*args, "--only", "data"]) == 0
    text = report.read_text()
    text = text.replace("## Summary\n\n| figure | target | measured | met |\n|---|---|---|---|\n",
                        "## Summary\n\n| figure | target | measured | met |\n|---|---|---|---|\n" + kept_summary)
    text = text.replace("## Sections run", kept_block + "## Sections run")
    text = text.rstrip("\n") + "\n" + kept_run
    assert kept_summary in text and kept_block in text and kept_run in text
    report.write_text(text)
    assert bench.main([*args, "--only", "fixed"]) == 0
    after = report.read_text()
    assert kept_block in after and kept_summary in after and kept_run in after
    assert after.count("## 4. Data") == 1 and after.count("## Per-client fixed costs") == 1
    assert after.count("| data |") == 1 and after.count("| fixed |") == 1
    assert set(json.loads(results.read_text())["sections"]) == {"data", "fixed"}


def test_splice_gives_a_report_without_summary_or_runs_table_the_new_ones():
    """A report from before the summary and sections-run tables existed keeps its blocks and
    gains both, holding the new rows (they were dropped before)."""
    old = "# Benchmarks\n\nold header\n\n## 3. Scaling\n\nkept scaling\n\n## 4. Data\n\nold data\n"
    new = ("# Benchmarks\n\nnew header\n\n## Summary\n\n| figure | target | measured | met |\n|---|---|---|---|\n"
           "| warm load of all beats | well under 2 s | 0.100 s | yes |\n\n## 4. Data\n\nnew data\n\n"
           "## Sections run\n\n| section | when | seconds |\n|---|---|---:|\n| data | 2026-12-05 10:00 | 3 |\n")
    out = bench.splice_report(old, new, ["## 4. Data"], ("warm load",), ("data",))
    assert out == ("# Benchmarks\n\nnew header\n\n## Summary\n\n| figure | target | measured | met |\n|---|---|---|---|\n"
                   "| warm load of all beats | well under 2 s | 0.100 s | yes |\n\n"
                   "## 3. Scaling\n\nkept scaling\n\n## 4. Data\n\nnew data\n\n"
                   "## Sections run\n\n| section | when | seconds |\n|---|---|---:|\n| data | 2026-12-05 10:00 | 3 |\n")


def test_overhead_at_length_adds_each_sides_fixed_cost_to_its_rounds():
    # pfl: 1.30 s in all, 0.70 s of it in 2 rounds -> 0.60 s fixed, 0.35 s a round;
    # plain: 0.84 s, 0.64 s in rounds -> 0.20 s fixed, 0.32 s a round.
    r = {"rounds": 2, "pfl_total_median_s": 1.30, "pfl_rounds_median_s": 0.70, "plain_total_median_s": 0.84,
         "plain_rounds_median_s": 0.64, "ratio_rounds": 0.70 / 0.64, "pfl_total_s": [1.3, 1.4],
         "plain_total_s": [0.84, 0.7]}
    assert bench.overhead_at_length(r, 2) == pytest.approx(1.30 / 0.84)
    assert bench.overhead_at_length(r, 20) == pytest.approx((0.60 + 20 * 0.35) / (0.20 + 20 * 0.32))
    text = bench._md_pairs_and_length(r)
    assert "1.548-2.000x" in text and "+0.40s a run" in text and "no run length brings the whole run" in text
    assert bench.length_within(r, 1.05) is None
    # A per-round ratio under the target: the first length at which the whole run is within it.
    r.update(pfl_rounds_median_s=0.655, ratio_rounds=0.655 / 0.64)
    n = next(k for k in range(1, 10_000) if (0.645 + k * 0.3275) / (0.20 + k * 0.32) <= 1.05)
    assert bench.length_within(r, 1.05) == n
    assert f"a run of {n} rounds or more" in bench._md_pairs_and_length(r)
    assert "not established" not in bench._md_pairs_and_length(r)
    # Repeats on both sides of the target: the length is reported as not established.
    r.update(pfl_rounds_s=[0.64, 0.70], plain_rounds_s=[0.64, 0.64])
    assert "straddle 1.05x, so that length is not established" in bench._md_pairs_and_length(r)
    # Fixed costs and rounds both within the target: one round suffices.
    r.update(pfl_total_median_s=0.85, pfl_rounds_median_s=0.65)
    assert bench.length_within(r, 1.05) == 1
