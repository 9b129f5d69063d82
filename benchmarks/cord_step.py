"""Cost of one CORD step against its parts, measured side by side in one run.

    python benchmarks/cord_step.py [--model results/models/warmup] [--steps 10]

Times, on the same batches: generation alone (N GRPO rollouts + the KL rollout + the text
reference), teacher forward alone, student forward + backward alone (loss on those
rollouts), then the full CORD step (the training code's own step: its inputs, judge,
backward and AdamW), twice: inputs prepared inline (the default on the CPU) and the next
batch prefetched in a background thread (the default on a GPU). Prints the ratio full /
(sum of parts) of each (target <= 1.15) and peak memory (RSS; CUDA when on a GPU).
Needs a finished default run for its inputs (results/). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="results/models/warmup")
    ap.add_argument("--qa", default="results/qa/train.parquet")
    ap.add_argument("--manifest", default="results/audio/manifest.parquet")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    import torch

    from cordflow import data, infer, models
    from cordflow.config import load_config
    from cordflow.train import losses
    from cordflow.train.judges import make_judge
    from cordflow.train.methods import method_params
    from cordflow.train.rollout import make_engine
    from cordflow.train.step import StepContext, Teacher, make_step, step_inputs

    params = method_params(load_config(args.config), "cord")
    spec, mcfg = params["method"], params["model"]
    torch.manual_seed(0)
    loaded = models.load(args.model, mcfg)
    loaded.model = models.add_lora(loaded.model, mcfg["lora"])
    models.set_trainable(loaded.model, spec["trainable"])
    model = loaded.model
    teacher = Teacher(spec["teacher"]["kind"], loaded)
    pairs = data.spoken_pairs(args.qa, args.manifest)
    batches = data.Batches(len(pairs), spec["loop"]["batch_size"], 0)
    tok, seq, max_new = spec["token"], spec["sequence"], mcfg["max_new_tokens"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    head = models.lm_head(model)

    def inputs(i):
        rows = pairs.items.iloc[batches(i)]
        return (infer.prompts(loaded, rows, "audio"),
                models.encode_text(loaded, list(rows["question"])))

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    parts = {"generate": [], "teacher_forward": [], "student_fwd_bwd": []}
    for i in range(args.steps):
        audio, text = inputs(i)
        n = seq["n"]
        (group, kl_roll, _), t = timed(lambda: (
            models.generate(loaded, audio, max_new, seq["temperature"], n),
            models.generate(loaded, audio, max_new, tok["temperature"]),
            teacher.generate(text, max_new, seq["reference_temperature"])))
        parts["generate"].append(t)
        t_hidden, t = timed(lambda: teacher.hidden(text, kl_roll))
        parts["teacher_forward"].append(t)

        def student():
            h = models.completion_hidden(model, audio, kl_roll)
            terms = losses.completion_terms(h, head, kl_roll.ids, kl_roll.mask, t_hidden,
                                            chunk_size=tok["chunk_size"],
                                            teacher_lm_head=teacher.lm_head)
            hg = models.completion_hidden(model, models.repeat_batch(audio, n), group)
            g = losses.completion_terms(hg, head, group.ids, group.mask)
            adv = torch.randn(group.ids.shape[0])
            loss = (losses.token_loss(terms["kl"], kl_roll.mask, tok["k"], tok["alpha"],
                                      tok["beta"])
                    + losses.policy_loss(g["logp"], g["logp"].detach(), adv, group.mask))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        _, t = timed(student)
        parts["student_fwd_bwd"].append(t)

    def full_steps(inputs) -> list[float]:
        ctx = StepContext(loaded, teacher, inputs, max_new,
                          make_engine(spec["rollout_engine"], loaded), make_judge(spec["judge"]))
        step = make_step(spec, ctx)
        out = []
        for i in range(args.steps):
            def one():
                loss, _ = step(i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            out.append(timed(one)[1])
        return out

    # The training default: prefetched on a GPU, inline on the CPU. Both, side by side.
    default_prefetch = loaded.device.type != "cpu"
    inputs = {p: step_inputs(loaded, pairs.items, batches, prefetch=p) for p in (False, True)}
    full = {p: full_steps(inputs[p]) for p in (not default_prefetch, default_prefetch)}
    for x in inputs.values():
        x.close()

    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(med.values())
    print(f"CORD step cost, {args.steps} steps of {spec['loop']['batch_size']} prompts x "
          f"{seq['n']} rollouts (medians, s)")
    for k, v in med.items():
        print(f"  {k:16s} {v:8.3f}")
    print(f"  {'sum of parts':16s} {total:8.3f}")
    for p in (default_prefetch, not default_prefetch):
        f = statistics.median(full[p])
        how = "next batch prefetched" if p else "inputs prepared inline"
        tag = "the default here" if p == default_prefetch else "the alternative"
        print(f"  full CORD step   {f:8.3f}   ratio {f / total:.3f} (target <= 1.15; {how}: "
              f"{tag})")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS {rss:.0f} MB", end="")
    if torch.cuda.is_available():
        print(f", peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MB", end="")
    print()


if __name__ == "__main__":
    main()
