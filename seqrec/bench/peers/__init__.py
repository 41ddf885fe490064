"""``seqrec bench peers``: seqrec next to RecBole, RecTools and RePlay on one split, one evaluator.

- ``export``: our prepared leave-one-out split -> every peer's input (RecBole atomic file,
  parquet frames for RecTools / RePlay), ids = our user index and model item id;
- ``envs``: one virtual environment per peer under a cache dir (torch 2.13.0 pinned), made on
  first use or by ``seqrec bench peers --setup``;
- ``run_recbole.py`` / ``run_rectools.py`` / ``run_replay.py`` (+ ``peer_common.py``): the runners,
  executed by the peer's own python, never importing seqrec; ``run_seqrec.py`` is ours;
- ``harness``: one runner in a subprocess (time limit, peak RSS, one-line error);
- ``score``: every library's top-k scored by ``seqrec.evaluation.metrics``;
- ``measure``: the cases x budgets loop -> flat records; ``plot``: the time-to-quality figure.
"""
