"""benchmarks/gateway_bench.targets(): issue 18's ratios, computed from the rows of one run."""

import asyncio

import pytest

from benchmarks.gateway_bench import (
    CEILING,
    OWN_CODE,
    TRITON_CLIENT,
    Cpu,
    Row,
    decoder_meta,
    on_gateway_loop,
    own_code_row,
    targets,
    triton_client_row,
    triton_rows,
)
from vaegan.export.local_triton import LocalTriton
from vaegan.repository import latent_dim

GW, ASY = "gateway, uvloop", "gateway, asyncio"


def row(name, shape, *, gateway=0.0, img_s=0.0, p50=None, codes=None) -> Row:
    cpu = {"gateway": gateway} if gateway else {}
    return Row(
        name, shape, calls=100, images=100, seconds=1.0, p50_ms=p50,
        codes=codes or {"OK": 100}, cpu_ms_per_call=cpu, images_per_s=img_s,
    )  # fmt: skip


def by_name(result: list[dict]) -> dict[str, dict]:
    return {t["target"]: t for t in result}


def test_each_target_is_the_ratio_of_its_two_rows_and_says_whether_it_is_met():
    rows = [
        row(CEILING, "1x64", img_s=1000.0),
        row("triton", "1x1", p50=2.0),
        row("triton", "4x64", img_s=900.0),
        row(GW, "1x1", gateway=1.0, p50=3.0),
        row(GW, "64x1", gateway=1.0, img_s=500.0),
        row(ASY, "64x1", gateway=1.25),
        row(GW, "4x64", gateway=4.0, img_s=880.0),
        row(GW, "16x8", gateway=2.0, img_s=700.0),
        row(GW + ", PNG", "64x1", gateway=2.0, img_s=450.0),
        row("bare grpc.aio, uvloop", "64x1", gateway=0.5),
        row(GW + ", GenerateStream", "64x1", gateway=0.4),
        row("gateway, --triton-shm", "4x64", gateway=2.0),
    ]
    t = by_name(targets(rows))
    expected = {
        "T2 gateway CPU/call 64x1, uvloop / asyncio": (0.8, True),
        "T3 gateway img/s 4x64 / Triton direct 4x64": (880 / 900, True),
        "T3 gateway img/s 4x64 / ceiling": (0.88, True),
        "T3 gateway img/s 16x8 / ceiling": (0.7, False),
        "T4 gateway img/s 64x1, PNG / RAW": (0.9, True),
        "T4 gateway CPU/image 64x1, PNG / RAW": (2.0, False),
        "T5 gateway CPU/call 64x1 / bare grpc.aio (same loop)": (2.0, False),
        "T6 p50 at 1x1, gateway / Triton direct": (1.5, False),
        "T7 gateway CPU/item, GenerateStream / unary 64x1": (0.4, True),
        "T8 gateway CPU/image 4x64, --triton-shm / wire": (0.5, True),
    }
    for name, (value, met) in expected.items():
        assert abs(t[name]["value"] - value) < 1e-9, name
        assert t[name]["met"] is met, name
    assert t["T1 non-OK calls in every row"] == {
        "target": "T1 non-OK calls in every row", "value": 0, "op": "<=", "goal": 0, "met": True,
    }  # fmt: skip
    assert t["T6 ms the gateway adds at 1x1 (p50)"]["value"] == 1.0


def test_t5_parts_add_the_gateways_own_code_and_its_share_of_a_triton_request_to_the_floor():
    gw = row(GW, "64x1", gateway=0.4)
    gw.items_per_triton_request = 10.0  # the gateway's batches in that row
    own = row(OWN_CODE, "64x1", gateway=0.05)
    hop = row(TRITON_CLIENT, "2x10", gateway=0.3)  # CPU a request, shared by its 10 items
    t = by_name(targets([gw, own, hop, row("bare grpc.aio, uvloop", "64x1", gateway=0.2)]))
    assert t["T5 part: the gateway's own code per call, ms"]["value"] == 0.05
    assert abs(t["T5 part: its share of a Triton request per call, ms"]["value"] - 0.03) < 1e-12
    assert abs(t["T5 with nothing else: (bare + both parts) / bare"]["value"] - 1.4) < 1e-12
    assert t["T5 gateway CPU/call 64x1 / bare grpc.aio (same loop)"]["value"] == 2.0
    # Without the parts' rows (e.g. --only uvloop bare), no part is reported.
    assert not any(
        "part" in k
        for k in by_name(targets([gw, row("bare grpc.aio, uvloop", "64x1", gateway=0.2)]))
    )


def test_a_non_ok_code_in_any_row_fails_t1():
    rows = [row("triton", "1x1"), row(GW, "64x1", codes={"OK": 90, "UNAVAILABLE": 7, "x": 3})]
    t1 = by_name(targets(rows))["T1 non-OK calls in every row"]
    assert (t1["value"], t1["met"]) == (10, False)


def test_a_target_whose_rows_did_not_run_is_unknown_not_met_or_missed():
    t = by_name(targets([row(GW, "64x1", gateway=1.0)]))  # e.g. --only uvloop
    assert t["T2 gateway CPU/call 64x1, uvloop / asyncio"]["value"] is None
    assert t["T2 gateway CPU/call 64x1, uvloop / asyncio"]["met"] is None
    assert "T6 ms the gateway adds at 1x1 (p50)" not in t


@pytest.mark.integration
def test_a_row_reads_from_real_triton_how_many_items_each_request_and_execution_carried(repo):
    model = "vaegan_decoder"
    with LocalTriton(repo) as triton:
        cpu = Cpu({"triton": triton.process.pid}, triton.metrics_url, model)
        (r,) = asyncio.run(
            triton_rows(triton.grpc_url, model, latent_dim(repo, model), cpu, 0.5, ["16x8"])
        )
    assert set(r.codes) == {"OK"} and r.calls > 0
    assert r.items_per_triton_request == 8.0  # every call of the row carried 8 embeddings
    # Triton's own batcher may merge concurrent requests; it never splits one.
    assert r.items_per_triton_execution is not None and r.items_per_triton_execution >= 8.0


def test_the_own_code_row_runs_calls_through_the_gateways_interceptors_in_batches_of_its_size(
    repo,
):
    r = own_code_row(decoder_meta(repo, "vaegan_decoder"), 0.5, batch=8)
    assert set(r.codes) == {"OK"} and r.calls > 0 and r.images == r.calls
    # 64 callers against a 1 ms backend fill the batches up to the size the row sets.
    assert 1 < r.items_per_triton_request <= 8
    assert r.cpu_ms_per_call["gateway"] > 0


@pytest.mark.integration
def test_the_triton_client_row_sends_the_gateways_requests_to_real_triton(repo):
    meta = decoder_meta(repo, "vaegan_decoder")
    with LocalTriton(repo) as triton:
        r = on_gateway_loop(triton_client_row(triton.grpc_url, meta, 0.5, items=8))
    assert set(r.codes) == {"OK"} and r.calls > 0
    assert r.shape == "2x8" and r.images == 8 * r.calls
