"""obsctl.topstats: rates and percentiles over REAL state-file snapshots.

tests/fixtures/top/{rclone,bindfs}-{a,b}.json are two consecutive state
files of a real rclone mount of moto (reads of a 4 MiB object in a loop, then
a 300000-byte write that failed with EIO) and of a real bindfs generic mount
under the same load, written by tests/fixtures/top/capture.py. The expected
numbers below are worked out by hand from the values in those files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from obsctl.instruments import LATENCY_BUCKETS_MS
from obsctl.topstats import Tracker, histogram_quantile, increase, mount_row

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "top"
MIB = 2 ** 20


def snap(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# live.time of rclone-b minus rclone-a (1795292801.920301 - 1795292799.9113765)
DT = 2.0089244842529297


# -- histogram_quantile ---------------------------------------------------

def test_quantile_interpolates_inside_the_bucket():
    # 10 values in (1, 2]: the median is half way, p99 at 99 % of the bucket
    assert histogram_quantile(0.5, [1, 2, 4], [0, 10, 0, 0]) == pytest.approx(1.5)
    assert histogram_quantile(0.99, [1, 2, 4], [0, 10, 0, 0]) == pytest.approx(1.99)


def test_quantile_first_bucket_starts_at_zero_and_inf_bucket_gives_the_top_bound():
    assert histogram_quantile(0.5, [1, 2, 4], [4, 0, 0, 0]) == pytest.approx(0.5)
    assert histogram_quantile(0.5, [1, 2, 4], [0, 0, 0, 3]) == 4.0
    # one value in (2, 4], two above 4: rank 1.5 (p50) falls in +Inf, rank 0.75 (p25) in (2, 4]
    assert histogram_quantile(0.5, [1, 2, 4], [0, 0, 1, 2]) == 4.0
    assert histogram_quantile(0.25, [1, 2, 4], [0, 0, 1, 2]) == pytest.approx(2 + 2 * 0.75 / 1)


def test_quantile_of_nothing_is_none_and_bad_arguments_are_refused():
    assert histogram_quantile(0.5, [1, 2], [0, 0, 0]) is None
    with pytest.raises(ValueError, match="outside"):
        histogram_quantile(1.5, [1, 2], [1, 0, 0])
    with pytest.raises(ValueError, match="bounds \\+ 1"):
        histogram_quantile(0.5, [1, 2], [1, 0])


def test_increase_treats_a_decrease_as_a_reset():
    assert increase(10, 4) == 6
    assert increase(3, 10) == 3
    assert increase(5, None) == 5


# -- one mount, two real snapshots -----------------------------------------

def test_rclone_rates_from_two_real_snapshots():
    a, b = snap("rclone-a"), snap("rclone-b")
    assert b["live"]["time"] - a["live"]["time"] == pytest.approx(DT)
    assert b["live"]["latency_bounds_ms"] == list(LATENCY_BUCKETS_MS)
    row = mount_row(b, a)
    assert (row.name, row.impl, row.state, row.health) == ("cap-rclone", "rclone", "ready", "ok")
    assert row.interval_s == pytest.approx(DT)
    assert row.read_mib_s == pytest.approx((70385664 - 20971520) / DT / MIB)
    assert row.write_mib_s == pytest.approx(300000 / DT / MIB)
    assert row.ops_per_s == pytest.approx((619 - 187) / DT)
    assert row.errors_per_s == pytest.approx(1 / DT)  # the failed write: eio 1
    assert row.waiting == 2
    assert row.driver_read_mib_s == pytest.approx((71713645 - 21038971) / DT / MIB)
    assert row.driver_write_mib_s == pytest.approx((70913345 - 21085492) / DT / MIB)
    # busiest: read +377; then flush, getattr, release all +12 (ties by name)
    assert [o.opcode for o in row.opcodes] == ["read", "flush", "getattr"]
    read, flush, _getattr = row.opcodes
    assert read.ops_per_s == pytest.approx(377 / DT)
    # read bucket increases: 5 in (0.1,0.25], 141 (0.25,0.5], 65 (0.5,1], 46, 53, 42, 10, 6, 3
    # (371 timed). p50: rank 185.5, 146 below 0.5 ms -> 0.5 + 0.5 * 39.5 / 65
    assert read.p50_ms == pytest.approx(0.5 + 0.5 * 39.5 / 65)
    # p99: rank 367.29, 362 below 25 ms, 6 in (25, 50] -> 25 + 25 * 5.29 / 6
    assert read.p99_ms == pytest.approx(25 + 25 * (0.99 * 371 - 362) / 6)
    # flush: [2, 3, 4, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1]: p50 rank 6 in (0.1, 0.25]; p99 rank 11.88 in (250, 500]
    assert flush.p50_ms == pytest.approx(0.1 + 0.15 * 1 / 4)
    assert flush.p99_ms == pytest.approx(250 + 250 * (0.99 * 12 - 11))
    assert row.requesters is None  # no kernel source: no requesters key


def test_bindfs_generic_has_driver_io_but_no_fs_source():
    row = mount_row(snap("bindfs-b"), snap("bindfs-a"))
    assert row.impl == "generic" and row.state == "ready"
    assert row.ops_per_s == 0 and row.read_mib_s == 0 and row.opcodes == []
    assert row.driver_read_mib_s is not None and row.driver_read_mib_s > 1


def test_requesters_when_the_state_has_them():
    a, b = snap("rclone-a"), snap("rclone-b")
    a["requesters"] = {"cat[100]": 50, "python3[7]": 10}
    b["requesters"] = {"cat[100]": 450, "python3[7]": 12, "ls[9]": 3, "idle[5]": 0}
    row = mount_row(b, a)
    assert row.requesters == [("cat[100]", pytest.approx(400 / DT)), ("ls[9]", pytest.approx(3 / DT)),
                              ("python3[7]", pytest.approx(2 / DT))]
    # the key inside live works too; on the first snapshot the list is empty, not None
    first = copy.deepcopy(b)
    first["live"]["requesters"] = first.pop("requesters")
    assert mount_row(first, None).requesters == []


def test_no_rates_across_processes_or_without_time_passing():
    a, b = snap("rclone-a"), snap("rclone-b")
    assert mount_row(b, None).ops_per_s is None
    assert mount_row(b, b).ops_per_s is None  # dt = 0
    other = copy.deepcopy(a)
    other["pid"] += 1
    assert mount_row(b, other).read_mib_s is None
    dead = copy.deepcopy(b)
    dead["state"] = "dead"
    assert mount_row(dead, a).ops_per_s is None
    old_obsctl = {k: v for k, v in b.items() if k != "live"}
    row = mount_row(old_obsctl, a)
    assert row.ops_per_s is None and row.waiting is None and row.name == "cap-rclone"


def test_counter_reset_in_the_same_process_uses_the_new_value():
    a, b = snap("rclone-a"), snap("rclone-b")
    # b compared with a later, larger snapshot: every counter went down -> reset
    later = copy.deepcopy(b)
    later["live"]["time"] = a["live"]["time"] - DT
    later["live"]["ops"] = 10_000
    later["live"]["ops_by_opcode"]["read"] += 1000
    later["live"]["latency_buckets"]["read"] = [c + 1000 for c in later["live"]["latency_buckets"]["read"]]
    row = mount_row(b, later)
    assert row.ops_per_s == pytest.approx(619 / (b["live"]["time"] - later["live"]["time"]))
    read = [o for o in row.opcodes if o.opcode == "read"][0]
    assert read.ops_per_s == pytest.approx(537 / (b["live"]["time"] - later["live"]["time"]))
    whole_b = histogram_quantile(0.5, LATENCY_BUCKETS_MS, b["live"]["latency_buckets"]["read"])
    assert read.p50_ms == pytest.approx(whole_b)  # the whole histogram of b is the increase


def test_tracker_keeps_rates_until_the_next_state_write():
    a, b = snap("rclone-a"), snap("rclone-b")
    tracker = Tracker()
    assert tracker.update([a])[0].ops_per_s is None
    assert tracker.update([a])[0].ops_per_s is None  # same snapshot read again
    assert tracker.times() == {a["mountpoint"]: a["live"]["time"]}
    assert not tracker.changed_since(tracker.times())
    start = tracker.times()
    rows = tracker.update([b])
    assert rows[0].ops_per_s == pytest.approx(432 / DT)
    assert tracker.changed_since(start)
    assert tracker.update([b])[0].ops_per_s == pytest.approx(432 / DT)  # refresh before the next write
    assert tracker.update([]) == [] and tracker.times() == {}
