"""seqrec.serving / seqrec serve (issue #24): torch-free answers, the HTTP routes and their 4xx
answers (the server keeps serving after each), corrupt bundles refused, the search's tie rules."""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

pytest.importorskip("onnxruntime", reason="serving tests need onnxruntime (pip install 'seqrec[serve]')")
pytest.importorskip("onnx", reason="exporting the test bundle needs onnx (pip install 'seqrec[export]')")

from seqrec.errors import DataError  # noqa: E402
from seqrec.serving import Recommender  # noqa: E402
from seqrec.serving import http as srv  # noqa: E402
from seqrec.serving.search import exact_topk, popularity_topk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {"data.options": TINY, "model.d": 16, "model.max_len": 20, "model.n_blocks": 1,
             "train.epochs": 2, "train.batch_size": 32, "train.max_time_s": None, "train.num_threads": 1}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """(ONNX bundle dir, raw catalog ids, one known user's history as raw ids)."""
    from seqrec import SeqRec
    from seqrec.export import export_bundle

    base = tmp_path_factory.mktemp("serve")
    rec = SeqRec(model="sasrec", loss="ce", overrides=OVERRIDES).fit(run_dir=base / "run", log=lambda s: None)
    d = rec.data_
    hist = d.item_ids[d.full.items[d.full.offsets[0]:d.full.offsets[1]]].tolist()
    return export_bundle(base / "run", base / "bundle"), d.item_ids[1:].tolist(), hist


@pytest.fixture(scope="module")
def server(bundle):
    s = srv.make_server(Recommender.from_bundle(bundle[0], threads=1), "127.0.0.1", 0)
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s.server_address[1]
    s.shutdown()
    s.server_close()


def _call(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
    c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"null")
    c.close()
    return out


def test_routes_answer_and_bad_requests_get_4xx(server, bundle):
    _, ids, hist = bundle
    status, health = _call(server, "GET", "/health")
    assert status == 200 and health == {"status": "ok", "items": len(ids)}
    status, meta = _call(server, "GET", "/metadata")
    assert status == 200 and meta["model"]["max_len"] == 20 and "files" not in meta
    status, ans = _call(server, "POST", "/recommend", {"histories": {"u": hist, "v": ids[:3]}, "k": 5})
    want = Recommender.from_bundle(bundle[0]).recommend({"u": hist, "v": ids[:3]}, k=5)
    assert status == 200 and [r["user"] for r in ans["recommendations"]] == ["u", "v"]
    assert [i for r in ans["recommendations"] for i in r["items"]] == want["item"].to_list()
    assert not set(ans["recommendations"][1]["items"]) & set(ids[:3]) and ans["warnings"] == []
    bad = [
        ("POST", "/recommend", b'{"histories": "not a list"', 400),
        ("POST", "/recommend", b"\xff\xfe", 400),
        ("POST", "/recommend", {"histories": ["a"]}, 422),
        ("POST", "/recommend", {"histories": {"u": "abc"}}, 422),
        ("POST", "/recommend", {"histories": {"u": hist}, "k": 0}, 422),
        ("POST", "/recommend", {"histories": {"u": hist}, "k": srv.MAX_K + 1}, 422),
        ("POST", "/recommend", {"histories": {"u": hist}, "kk": 3}, 422),
        ("POST", "/recommend", {"histories": {"u": ["x1"]}}, 422),  # text ids for an integer catalog
        ("POST", "/recommend", {"histories": {"u": hist}, "items": [99999991]}, 422),
        ("POST", "/recommend", {"histories": {str(i): [] for i in range(srv.MAX_USERS + 1)}}, 413),
        ("POST", "/recommend", {"histories": {"u": [1] * (srv.MAX_HISTORY + 1)}}, 413),
        ("GET", "/nope", None, 404),
        ("POST", "/health", {}, 405),
        ("GET", "/recommend", None, 405),
    ]
    for method, path, body, want_status in bad:
        status, ans = _call(server, method, path, body)
        assert status == want_status and ans["error"], (path, body, ans)
        assert _call(server, "GET", "/health")[0] == 200  # still serving


def test_oversized_body_and_unknown_ids(server, bundle):
    _, ids, _ = bundle
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:  # a body over MAX_BODY: refused unread
        s.sendall(f"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: {srv.MAX_BODY + 1}\r\n\r\n{{".encode())
        assert s.recv(4096).split(b" ")[1] == b"413"
    status, ans = _call(server, "POST", "/recommend", {"histories": {"cold": [99999991], "mix": ids[:2] + [99999992]},
                                                       "k": 3})
    assert status == 200 and len(ans["warnings"]) == 2  # an ignored item; a user answered by popularity
    pop = np.load(bundle[0] / "popularity.npy")
    assert ans["recommendations"][0]["scores"] == sorted(pop.tolist(), reverse=True)[:3]
    assert _call(server, "GET", "/health")[0] == 200


def test_serving_without_torch(bundle, tmp_path):
    """`seqrec serve` in a process where `import torch` fails: it starts, answers and refuses bad JSON."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys; sys.modules['torch'] = None\n"
            "from seqrec.cli import main\n"
            f"sys.exit(main(['serve', {str(bundle[0])!r}, '--port', '{port}', '--threads', '1']))\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            try:
                if _call(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                assert p.poll() is None, p.stderr.read()
                time.sleep(0.1)
        status, ans = _call(port, "POST", "/recommend", {"histories": {"u": bundle[2]}, "k": 4})
        assert status == 200 and len(ans["recommendations"][0]["items"]) == 4
        assert _call(port, "POST", "/recommend", b"{")[0] == 400
        assert _call(port, "GET", "/health")[0] == 200
    finally:
        p.terminate()
        p.wait(10)


def test_corrupt_or_incomplete_bundle_is_refused(bundle, tmp_path, capsys):
    import shutil

    from seqrec.cli import main

    b = tmp_path / "b"
    shutil.copytree(bundle[0], b)
    emb = b / "item_emb.npy"
    raw = bytearray(emb.read_bytes())
    raw[-1] ^= 1
    emb.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="item_emb.npy is corrupt"):
        Recommender.from_bundle(b)
    assert main(["serve", str(b), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    (b / "encoder.onnx").unlink()
    with pytest.raises(DataError, match="encoder.onnx is missing"):
        Recommender.from_bundle(b)
    with pytest.raises(DataError, match="not a seqrec bundle"):
        Recommender.from_bundle(tmp_path)


def test_exact_search_matches_the_torch_retriever_with_ties_and_filters():
    from seqrec.retrieval import build_retriever

    rng = np.random.default_rng(0)
    emb = rng.integers(-2, 3, size=(300, 4)).astype(np.float32)  # small integers: many exact ties
    q = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)
    seen = [rng.choice(300, size=rng.integers(0, 20)) for _ in range(50)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    allow, deny = np.arange(0, 300, 2), np.array([4, 8, 10])
    eligible = np.zeros(300, bool)
    eligible[allow] = True
    eligible[deny] = False
    r = build_retriever("torch", device="cpu").build(emb)
    for kw, el in (({}, None), ({"allow": allow, "deny": deny}, eligible)):
        want = r.search(q, 12, exclude=(offsets, np.concatenate(seen)), **kw)
        got = exact_topk(emb, q, 12, seen, el)
        assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    s, i = exact_topk(emb, q[:2], 400)  # more than the catalog: padded with -1 / -inf
    assert (i[:, 300:] == -1).all() and np.isneginf(s[:, 300:]).all()


def test_popularity_ties_by_lower_id():
    from seqrec.queries import popularity_topk as reference

    pop = np.array([3, 5, 5, 1, 5, 0, 3], dtype=np.int64)
    ok = np.array([True, True, False, True, True, True, True])
    s, i = popularity_topk(pop, 4, ok)
    rs, ri = reference(np.concatenate([[0], pop]), 4, deny=[2])
    assert i.tolist() == ri.tolist() == [1, 4, 0, 6] and s.tolist() == rs.tolist()


def test_bench_helpers_on_a_widened_bundle(bundle, tmp_path):
    """`seqrec bench serve`'s pieces on the tiny bundle: a widened catalog with a saved faiss-ivf
    index loads (checksums rewritten), and the timings and recall are sane."""
    pytest.importorskip("faiss", reason="the widened bundle ships a faiss-ivf index")
    from seqrec.bench import serve as bench

    b, ids, hist = bundle
    r = Recommender.from_bundle(b, threads=1)
    seqs = [np.asarray(r.catalog_ids(ids[i:i + 5]) + 1) for i in range(0, 30, 3)]
    wide = bench.widen_bundle(b, tmp_path / "wide", 2000, r.user_vectors(seqs))
    w = Recommender.from_bundle(wide, threads=1)  # verifies the rewritten checksums
    assert w.n_items == 2000 and (wide / "index" / "index.faiss").is_file()
    assert np.array_equal(np.load(wide / "item_emb.npy")[:len(ids)], np.load(b / "item_emb.npy"))
    lat, tops = bench.single_latency(w.set_params(nprobe=1) if w.backend != "exact" else w, [hist] * 5, warmup=1)
    assert 0 < lat["p50_ms"] <= lat["p99_ms"] and all(len(t) == 10 for t in tops)
    _, exact = bench.single_latency(Recommender.from_bundle(wide, exact=True), [hist] * 5, warmup=1)
    assert 0.0 <= bench.recall(tops, exact) <= 1.0 and bench.recall(exact, exact) == 1.0
    assert bench.batch_throughput(w, [hist] * 8, 4) > 0
