"""Cross-validated settings of the video temporal term: tune on some sequences, report on others.

Every grid point (``lam:low:high[:agree_low:agree_high]``: the most the temporal weight may
reach, the flow-trust ramp of :func:`~napari_hitl.video.trust.temporal_weight` and, optionally,
the bounds of :func:`~napari_hitl.video.trust.agreement_factor`) runs every round of
``napari-hitl bench video`` on every sequence. Runs share what they have in common: round one's
units do not depend on the setting, a round's temporal fit is the same for every setting up to
its probe step, and a setting only acts through the weight it gives a round's labels after it,
so settings that give the same weights share one fit (a tree over rounds, branching where the
weights differ; see :func:`run_grid`). Each branch is exactly the run ``bench video --lam L
--trust-low a --trust-high b [--agree-low c --agree-high d]`` would make (same seed, same
picks, same fits), at a fraction of the cost.

Cross-validation (:func:`cross_validate`): the sequences split into two folds fixed before any
result (names sorted, alternating: A takes the 1st, 3rd, 5th, ..., B the others). On each fold
the setting with the best mean fine-tune + temporal mIoU (over the fold's sequences and rounds)
among those that are never more than ``--margin`` below fine-tuning alone in any round and
sequence of the fold is chosen (if none is, the one whose worst shortfall is least), then
reported on the other fold: per sequence and round, propagation, fine-tune and fine-tune +
temporal mIoU, J, F, J&F and clicks, with the mean and the worst sequence. Ties go to the
earlier grid point (list the current defaults first).

Usage: one process may run some sequences (``--sequences``) and write their grid results
(``--json``); ``--combine a.json b.json`` reads such files and runs the cross-validation.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_hitl.errors import InputError
from napari_hitl.evaluate import bench_video as bv

#: the grid, current defaults first (ties go to the earlier point)
DEFAULT_GRID = "100:0.2:0.4,100:0.3:0.6"
METRICS = ("miou", "J", "F", "J&F")


@dataclass(frozen=True)
class Setting:
    """One grid point: the most the temporal weight may reach, the trust ramp's bounds and,
    optionally, the bounds of the labels' agreement along the flow
    (:func:`~napari_hitl.video.trust.agreement_factor`; None: not used)."""

    lam: float
    low: float
    high: float
    agree_low: float | None = None
    agree_high: float | None = None

    @property
    def key(self) -> str:
        base = f"{self.lam:g}:{self.low:g}:{self.high:g}"
        return base if self.agree_low is None else f"{base}:{self.agree_low:g}:{self.agree_high:g}"

    @property
    def probes(self) -> bool:
        return self.agree_low is not None

    def weight(self, trust: float, agreement: float | None = None) -> float:
        """The temporal weight for a flow ``trust`` and (with agreement bounds) label ``agreement``."""
        from napari_hitl.video.trust import agreement_factor, temporal_weight

        lam = temporal_weight(trust, self.lam, self.low, self.high)
        if self.probes and lam > 0:
            if agreement is None:
                raise InputError(f"grid point {self.key} needs the labels' agreement along the flow")
            lam *= agreement_factor(agreement, self.agree_low, self.agree_high)
        return lam


def parse_grid(spec: str) -> list[Setting]:
    """``"100:0.2:0.4,100:0.2:0.4:0.6:0.8"`` -> settings (lam max, trust low, trust high[, agreement
    low, agreement high]), in order."""
    out = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        try:
            vals = [float(x) for x in part.split(":")]
            if len(vals) not in (3, 5):
                raise ValueError
        except ValueError:
            raise InputError(f"a grid point is lam:low:high[:agree_low:agree_high] (e.g. 100:0.2:0.4 or "
                             f"100:0.2:0.4:0.6:0.8), got {part!r}") from None
        s = Setting(*vals)
        s.weight(0.5, 0.5)  # bounds out of order: a clear error now
        if s.lam < 0:
            raise InputError(f"lam must be >= 0, got {s.lam}")
        if s in out:
            raise InputError(f"grid point {part} is listed twice")
        out.append(s)
    if not out:
        raise InputError("the grid is empty")
    return out


def folds(names) -> tuple[list[str], list[str]]:
    """The two folds, fixed by the names alone: sorted, alternating (A: 1st, 3rd, ...; B: the rest)."""
    names = sorted(names)
    return names[0::2], names[1::2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="../shared/data/davis2016 (or any folder bench video reads)")
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="do not run: read these grid results (from runs with --json) and cross-validate")
    parser.add_argument("--grid", default=DEFAULT_GRID,
                        help="comma-separated lam:trust_low:trust_high points, current defaults first "
                        "(default: %(default)s)")
    parser.add_argument("--margin", type=float, default=0.01,
                        help="a setting qualifies when fine-tune + temporal is never more than this mIoU below "
                        "fine-tune alone, in any round and sequence of the tuning fold (default: %(default)s)")
    parser.add_argument("--unit", default="rect40")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=2.4, help="clicks per round, %% of a full annotation")
    parser.add_argument("--sequences", help="comma-separated subset of sequences (default: all)")
    parser.add_argument("--limit-frames", type=int, default=30)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--motion-trust-min", type=float, default=None,
                        help="as bench video (default: session.MOTION_TRUST_MIN)")
    parser.add_argument("--flow", default="dis")
    parser.add_argument("--cache", help="folder for cached flows (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the grid results (and, with both folds, the cross-validation) here")
    parser.add_argument("--md", help="write the cross-validation's markdown tables here")
    parser.add_argument("--plot", help="write a PNG of the held-out figures here")
    parser.add_argument("--finetune-from", metavar="JSON",
                        help="take fine-tune alone's figures from this earlier run (video-cv or bench video JSON, "
                        "same run settings and seed) instead of fitting it again: its weight-0 fit does not depend "
                        "on the temporal term's settings; round one only (later rounds' labels depend on the "
                        "setting), and its clicks must match")
    parser.add_argument("--note", help="a note kept in the JSON (e.g. what else ran on the machine)")


# -- running the grid ---------------------------------------------------------------------------
def _fork_session(session):
    out = copy.copy(session)
    out.labels = session.labels.copy()
    out.annotated = session.annotated.copy()
    out.rounds = list(session.rounds)
    return out


def _fork_tuner(tuner):
    """An independent copy of a tuner (model, optimiser, random streams); frames, flows and the
    confidence cache are shared."""
    memo = {id(tuner.flows): tuner.flows, id(tuner.frames): tuner.frames, id(tuner._x): tuner._x,
            id(tuner._conf): tuner._conf}
    return copy.deepcopy(tuner, memo)


def _session_args(args, setting: Setting) -> argparse.Namespace:
    return argparse.Namespace(steps=args.steps, lam=setting.lam, seed=args.seed, fixed_lam=False,
                              trust_low=setting.low, trust_high=setting.high,
                              motion_trust_min=args.motion_trust_min, unit=args.unit, scale=args.scale,
                              flow=args.flow, budget=args.budget)


def finetune_rows(path, run_settings: dict) -> dict[str, list[dict]]:
    """{sequence: [fine-tune alone's figures per round]} of an earlier video-cv or bench video
    JSON, after checking that it was run with ``run_settings`` (unit, rounds covered, budget,
    frames, scale, steps, seed, flow)."""
    from napari_hitl.io import read_json

    got = read_json(path)
    alias = {"budget": "budget_pct_per_round"}
    for key, want in run_settings.items():
        have = got.get(key, got.get(alias.get(key, key)))
        if key == "rounds":
            ok = have is not None and int(have) >= int(want)
        else:
            ok = have == want or (isinstance(want, float) and have is not None and float(have) == want)
        if not ok:
            raise InputError(f"{path} was run with {key}={have!r}, this run has {want!r}")
    out = {}
    for v in got["videos"]:
        rows = next(iter(v["settings"].values())) if "settings" in v else v["rounds"]
        out[v["name"]] = [{"clicks": r["clicks"], "finetune": r["methods"]["finetune"],
                           "seconds": {k: x for k, x in r["seconds"].items() if k.startswith("finetune ")}}
                          for r in rows]
    return out


def run_grid(name: str, frames: np.ndarray, truth: np.ndarray, grid: list[Setting], args, cache: Path,
             say=None, finetune: list[dict] | None = None) -> dict:
    """Every round of bench video for every grid setting on one video, sharing fits.

    A node of the tree is the state after some rounds (the human labels so far, the fine-tune
    and the fine-tune + temporal models); its children are the distinct temporal weights the
    settings of that node give the next round's labels. Returns {'name', 'frames', 'full_cost',
    'budget_per_round', 'motion_trust', 'round_one_motion', 'fits', 'seconds', 'settings':
    {key: [row per round]}} with rows as bench video's (clicks, clicks_pct, methods with
    miou, J, F, J&F, ...; the temporal method's lam and evidence). ``finetune`` (rows of
    :func:`finetune_rows`): fine-tune alone is not fitted, its figures are taken from there
    (the clicks of each round must match).
    """
    from napari_hitl.evaluate.annotate import annotate_budget
    from napari_hitl.simulate.cost import full_annotation_cost
    from napari_hitl.video.trust import flow_evidence

    say = say or (lambda *a, **k: None)
    t_all = time.perf_counter()
    session = bv.new_session(frames, _session_args(args, grid[0]), cache / name,
                             progress=lambda what, d, n: say(f"[{name}] {what}", d, n))
    session.precompute_flows()
    full = full_annotation_cost(truth)
    budget = bv.round_budget(full, args)
    ft = session.new_tuner(0.0) if finetune is None else None
    tt = session.new_tuner()  # the temporal tuner; its weight is set per branch below
    probs, feats = tt.predict(with_features=True)
    fits = 0
    # node: (settings, session, ft tuner, temporal tuner, probs, feats, rows so far)
    nodes = [(list(grid), session, ft, tt, probs, feats, [])]
    finished: dict[str, list] = {}
    for r in range(1, args.rounds + 1):
        children = []
        for settings, sess, ft, tt, probs, feats, rows in nodes:
            rec = annotate_budget(sess, truth, budget, probs, feats, first_round=(r == 1), seed=args.seed + r)
            base = {"round": r, "units": len(rec.units), "clicks": sess.clicks,
                    "clicks_pct": 100.0 * sess.clicks / full, "seconds": dict(rec.seconds), "methods": {}}
            t = time.perf_counter()
            base["methods"]["propagation"] = bv.score(sess.propagate(), truth, sess.flows)
            base["seconds"]["propagation"] = time.perf_counter() - t
            labels = sess.work_labels()
            if finetune is not None:
                if r > len(finetune) or finetune[r - 1]["clicks"] != sess.clicks:
                    raise InputError(f"{name} round {r}: the fine-tune figures given were made with other labels")
                base["methods"]["finetune"] = dict(finetune[r - 1]["finetune"], reused=True)
                base["seconds"].update(finetune[r - 1]["seconds"])
            else:
                ft = _fork_tuner(ft)
                fit = ft.fit(labels, progress=lambda s, n, loss: say(f"[{name}] round {r} finetune step", s, n))
                fits += 1
                t = time.perf_counter()
                base["methods"]["finetune"] = bv.score(sess.labels_from_probs(ft.predict()), truth, sess.flows)
                base["seconds"]["finetune fit"] = fit["seconds"]
                base["seconds"]["finetune predict"] = time.perf_counter() - t
            # the temporal tuner's round up to its probe step is the same for every setting
            run = tt.begin_round(labels, progress=lambda s, n, loss: say(f"[{name}] round {r} temporal step", s, n))
            tt.train(run, run.probe_step)
            gaps = [g for g in tt.settings.gaps if g < len(labels)]
            ev = (flow_evidence(labels, sess.flows, gaps, confidence=tt.confidence).as_dict()
                  if len(labels) > 1 else {"trust": 0.0})
            if len(labels) > 1 and any(s.probes and s.weight(ev["trust"], 1.0) > 0 for s in settings):
                t = time.perf_counter()
                agreement, pixels = tt.probe(labels)
                ev.update(label_agreement=agreement, agreement_pixels=pixels, probe_seconds=time.perf_counter() - t)
            by_weight: dict[float, list[Setting]] = {}
            for s in settings:
                by_weight.setdefault(s.weight(ev["trust"], ev.get("label_agreement")), []).append(s)
            for lam, group in by_weight.items():
                child = _fork_tuner(tt)
                crun = run.fork()
                crun.lam, crun.evidence = lam, dict(ev)
                crun.progress = lambda s, n, loss: say(f"[{name}] round {r} temporal lam {lam:.0f} step", s, n)
                child.train(crun, crun.steps)
                fit = child.end_round(crun)
                fits += 1
                t = time.perf_counter()
                p, f = child.predict(with_features=True)
                row = copy.deepcopy(base)
                row["methods"]["finetune+temporal"] = {
                    **bv.score(sess.labels_from_probs(p), truth, sess.flows), "lam": lam, "evidence": ev,
                    "loss": {k: fit[k] for k in ("loss", "ce", "temporal")}}
                row["seconds"]["finetune+temporal fit"] = fit["seconds"]
                row["seconds"]["finetune+temporal predict"] = time.perf_counter() - t
                row["round_seconds"] = (row["seconds"]["score"] + fit["seconds"]
                                        + row["seconds"]["finetune+temporal predict"])
                row["settings"] = [s.key for s in group]
                say(f"[{name}] round {r} ({', '.join(row['settings'])}): clicks {row['clicks_pct']:.2f}% | "
                    + " | ".join(f"{m} mIoU {v['miou']:.3f} J {v['J']:.3f}" for m, v in row["methods"].items())
                    + f" | trust {ev['trust']:.3f} lam {lam:.1f}")
                branch = _fork_session(sess) if len(by_weight) > 1 else sess
                children.append((group, branch, ft, child, p, f, rows + [row]))
        nodes = children
    for settings, _, _, _, _, _, rows in nodes:
        for s in settings:
            finished[s.key] = rows
    return {"name": name, "frames": int(len(frames)), "size": [int(frames.shape[1]), int(frames.shape[2])],
            "work_size": list(session.work_shape), "unit": session.units.name, "full_cost": int(full),
            "budget_per_round": budget, "motion_trust": session.motion_trust,
            "round_one_motion": bool(session.flow_trusted()), "fits": fits,
            "seconds": time.perf_counter() - t_all, "device": tt.device_description,
            "settings": {s.key: finished[s.key] for s in grid}}


# -- cross-validation ---------------------------------------------------------------------------
def _as_video(rec: dict, key: str) -> dict:
    """One sequence's rounds under one setting, in bench video's record form (for its tables)."""
    return {"name": rec["name"], "frames": rec["frames"], "full_cost": rec["full_cost"],
            "rounds": rec["settings"][key]}


def tuning_scores(records: list[dict], grid: list[Setting], margin: float) -> list[dict]:
    """Per setting over ``records``: mean fine-tune + temporal mIoU (sequences x rounds) and the
    worst (fine-tune + temporal - fine-tune) mIoU of any round and sequence; qualifies when
    that is >= -``margin``."""
    out = []
    for s in grid:
        tm, gaps = [], []
        for rec in records:
            for row in rec["settings"][s.key]:
                m = row["methods"]
                tm.append(m["finetune+temporal"]["miou"])
                gaps.append(m["finetune+temporal"]["miou"] - m["finetune"]["miou"])
        out.append({"setting": s.key, "mean_miou": float(np.mean(tm)), "worst_gain": float(min(gaps)),
                    "qualifies": bool(min(gaps) >= -margin)})
    return out


def choose(scores: list[dict]) -> str:
    """The chosen setting's key: the best mean mIoU among qualifying settings (the earliest on a
    tie), else the one with the least worst shortfall."""
    ok = [s for s in scores if s["qualifies"]]
    if ok:
        best = max(s["mean_miou"] for s in ok)
        return next(s["setting"] for s in ok if s["mean_miou"] == best)
    best = max(s["worst_gain"] for s in scores)
    return next(s["setting"] for s in scores if s["worst_gain"] == best)


def cross_validate(records: list[dict], grid: list[Setting], margin: float, rounds: int) -> dict:
    """Both folds: choose on one (:func:`tuning_scores`, :func:`choose`), report on the other."""
    by_name = {r["name"]: r for r in records}
    a, b = folds(by_name)
    if not a or not b:
        raise InputError(f"cross-validation needs at least two sequences, got {', '.join(by_name) or 'none'}")
    out = {"folds": {"A": a, "B": b}, "margin": margin, "runs": []}
    held_out = []
    for tune, report, label in ((a, b, "tune A, report B"), (b, a, "tune B, report A")):
        scores = tuning_scores([by_name[n] for n in tune], grid, margin)
        key = choose(scores)
        videos = [_as_video(by_name[n], key) for n in report]
        held_out += [dict(v, setting=key) for v in videos]
        out["runs"].append({"run": label, "tune": tune, "report": report, "tuning": scores, "chosen": key,
                            "report_summary": bv.summarise(videos, rounds)})
    out["held_out"] = held_out
    out["held_out_summary"] = bv.summarise(held_out, rounds)
    chosen = {r["chosen"] for r in out["runs"]}
    out["default"] = (chosen.pop() if len(chosen) == 1 else grid[0].key)
    out["default_reason"] = ("both folds chose it" if len(out["runs"]) == 2 and
                             out["runs"][0]["chosen"] == out["runs"][1]["chosen"]
                             else "the folds disagree: the current defaults (first grid point) stay")
    return out


def markdown(cv: dict, grid_records: list[dict], meta: dict) -> str:
    """The cross-validation as markdown: folds, tuning scores, held-out figures per sequence and
    round (worst beside mean)."""
    lines = ["# Video: cross-validated temporal-term settings", "",
             f"Settings per round: unit {meta['unit']}, {meta['rounds']} rounds x {meta['budget']}% clicks, "
             f"{meta['limit_frames'] or 'all'} frames, scale {meta['scale']}, {meta['steps']} steps, seed {meta['seed']}. "
             f"Grid (lam max : trust low : trust high[ : agreement low : agreement high]): {', '.join(meta['grid'])}. "
             f"Folds fixed before any result (sorted names, alternating): A = {', '.join(cv['folds']['A'])}; "
             f"B = {', '.join(cv['folds']['B'])}. A setting qualifies on a fold when fine-tune + temporal is "
             f"never more than {cv['margin']} mIoU below fine-tune alone in any round and sequence there; "
             f"the best mean fine-tune + temporal mIoU among those is chosen.", ""]
    for run in cv["runs"]:
        lines += [f"## {run['run']}: tuning on {', '.join(run['tune'])}", "",
                  "| setting | mean mIoU (f+t) | worst f+t minus ft | qualifies |", "|---|---|---|---|"]
        for s in run["tuning"]:
            mark = " **chosen**" if s["setting"] == run["chosen"] else ""
            lines.append(f"| {s['setting']}{mark} | {s['mean_miou']:.3f} | {s['worst_gain']:+.3f} | "
                         f"{'yes' if s['qualifies'] else 'no'} |")
        lines.append("")
    lines += ["## Held-out figures (each sequence under the setting chosen on the other fold)", "",
              "| sequence | setting | round | clicks % | method | mIoU | J | F | J&F | lam |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for v in cv["held_out"]:
        for row in v["rounds"]:
            for m in bv.METHODS:
                x = row["methods"][m]
                lam = f"{x['lam']:.1f}" if m == "finetune+temporal" else ""
                lines.append(f"| {v['name']} | {v['setting']} | {row['round']} | {row['clicks_pct']:.2f} | {m} | "
                             f"{x['miou']:.3f} | {x['J']:.3f} | {x['F']:.3f} | {x['J&F']:.3f} | {lam} |")
    lines += ["", f"## Held-out means over the {len(cv['held_out'])} sequences, worst sequence beside", "",
              "| round | clicks % | method | mIoU | worst mIoU | J | worst J | F | J&F |", "|---|---|---|---|---|---|---|---|---|"]
    for row in cv["held_out_summary"]:
        for m in bv.METHODS:
            x = row["methods"][m]
            lines.append(f"| {row['round']} | {row['clicks_pct']:.2f} | {m} | {x['miou']:.3f} | "
                         f"{x['worst_miou'][1]:.3f} ({x['worst_miou'][0]}) | {x['J']:.3f} | "
                         f"{x['worst_J'][1]:.3f} ({x['worst_J'][0]}) | {x['F']:.3f} | {x['J&F']:.3f} |")
    gaps = [(v["name"], row["round"], v["setting"],
             row["methods"]["finetune+temporal"]["miou"] - row["methods"]["finetune"]["miou"])
            for v in cv["held_out"] for row in v["rounds"]]
    lines += ["", "## Held out: fine-tune + temporal minus fine-tune alone (mIoU), per sequence and round", "",
              "| sequence | round | setting | f+t minus ft |", "|---|---|---|---|"]
    lines += [f"| {n} | {r} | {k} | {g:+.3f} |" for n, r, k, g in gaps]
    if gaps:
        worst = min(gaps, key=lambda x: x[3])
        met = worst[3] >= -cv["margin"]
        lines += ["", f"Worst: {worst[3]:+.3f} ({worst[0]}, round {worst[1]}). Target (never more than "
                  f"{cv['margin']} below fine-tune alone on a held-out sequence and round): "
                  f"{'met' if met else 'NOT met'}."]
    lines += ["", f"Default after cross-validation: {cv['default']} ({cv['default_reason']}).", ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    if grid_records:
        lines += ["## Every grid point on every sequence (for reference; the choice used only the tuning fold)", "",
                  "| sequence | setting | round | f+t mIoU | ft mIoU | f+t J | lam | trust | label agreement |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for rec in grid_records:
            for key, rows in rec["settings"].items():
                for row in rows:
                    t, f = row["methods"]["finetune+temporal"], row["methods"]["finetune"]
                    lines.append(f"| {rec['name']} | {key} | {row['round']} | {t['miou']:.3f} | {f['miou']:.3f} | "
                                 f"{t['J']:.3f} | {t['lam']:.1f} | {t['evidence'].get('trust', float('nan')):.3f} | "
                                 f"{t['evidence'].get('label_agreement', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


# -- the command --------------------------------------------------------------------------------
def run(args) -> int:
    import torch

    from napari_hitl.io import atomic_write_json, atomic_write
    from napari_hitl.video.units import parse_unit

    grid = parse_grid(args.grid)
    meta = {"benchmark": "video-cv", "unit": args.unit, "rounds": args.rounds, "budget": args.budget,
            "limit_frames": args.limit_frames, "scale": args.scale, "steps": args.steps, "seed": args.seed,
            "flow": args.flow, "threads": args.threads, "grid": [s.key for s in grid], "margin": args.margin,
            "motion_trust_min": args.motion_trust_min}
    if args.note:
        meta["note"] = args.note
    records: list[dict] = []
    if args.combine:
        from napari_hitl.io import read_json

        run_keys = ("unit", "rounds", "budget", "limit_frames", "scale", "steps", "seed", "flow", "motion_trust_min")
        for k, path in enumerate(args.combine):
            got = read_json(path)
            missing = [s.key for s in grid if any(s.key not in r["settings"] for r in got["videos"])]
            if missing:
                raise InputError(f"{path} has no results for grid point(s) {', '.join(missing)}")
            if k == 0:  # the runs' settings, not this command line's
                meta.update({key: got.get(key) for key in run_keys + ("data", "threads")})
            elif any(got.get(key) != meta[key] for key in run_keys):
                raise InputError(f"{path} was run with other settings than {args.combine[0]}")
            records += got["videos"]
        args.rounds = int(meta["rounds"])
    else:
        if not args.data:
            raise InputError("give --data to run, or --combine to read results")
        parse_unit(args.unit)
        torch.set_num_threads(max(1, int(args.threads)))
        videos = bv.select_videos(bv.find_videos(Path(args.data)), args.sequences)
        meta["data"] = str(args.data)
        say = bv._Progress()
        tmp = None if args.cache else tempfile.TemporaryDirectory(prefix="napari-hitl-video-cv-")
        cache = Path(args.cache) if args.cache else Path(tmp.name)
        reuse = None
        if getattr(args, "finetune_from", None):
            if args.rounds != 1:
                raise InputError("--finetune-from takes round one only (later rounds' labels depend on the setting)")
            reuse = finetune_rows(args.finetune_from, {
                "unit": args.unit, "rounds": args.rounds, "budget": args.budget, "limit_frames": args.limit_frames,
                "scale": args.scale, "steps": args.steps, "seed": args.seed, "flow": args.flow})
            meta["finetune_from"] = str(args.finetune_from)
        try:
            for name, folder, layout in videos:
                frames, truth = bv.load_video(folder, layout, args.limit_frames)
                if reuse is not None and name not in reuse:
                    raise InputError(f"{args.finetune_from} has no fine-tune figures for {name}")
                records.append(run_grid(name, frames, truth, grid, args, cache, say,
                                        None if reuse is None else reuse[name]))
                print(f"{name}: {records[-1]['fits']} fits for {len(grid)} settings, "
                      f"{records[-1]['seconds'] / 60:.1f} min", flush=True)
                if args.json:
                    atomic_write_json(args.json, {**meta, "videos": records})
        finally:
            if tmp is not None:
                tmp.cleanup()
    report = {**meta, "videos": records}
    names = [r["name"] for r in records]
    a, b = folds(names)
    if a and b:
        cv = cross_validate(records, grid, args.margin, args.rounds)
        report["cv"] = cv
        text = markdown(cv, records, meta)
        print(text)
        if args.md:
            atomic_write(args.md, lambda fh: fh.write(text.encode()))
        if args.plot:
            bv.plot(Path(args.plot), cv["held_out_summary"],
                    f"held-out (cross-validated) figures, {len(names)} sequences", cv["held_out"])
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
