"""Pairs the distill and PyTorch lines a training benchmark printed (train_bench.sh,
lora_long_bench.sh, smollm2_lora_bench.sh) and prints, per setting, distill / PyTorch tokens/s and
peak RSS, with whether distill is at least as fast at no more memory. Each distill line is paired
with the PyTorch line of the same setting that follows it (the scripts run distill first): f32
with f32, distill's `bf16-mixed` with PyTorch's `bf16-autocast` where both ran. Rows with no
PyTorch twin in the run (distill with layers checkpointed, or bf16 where PyTorch's autocast did
not run) are set against PyTorch's f32 figure of the same setting, marked "not scored", and left
out of the verdict.
Usage: python3 benches/train_ratios.py LOG"""
import re, sys

LINE = re.compile(
    r"^(?P<side>distill|torch) (?P<model>SmolLM2-135M )?(?P<kind>full|LoRA)(?P<mods>.*?) r=(?P<rank>\d+)"
    r"(?: (?P<prec1>f32|bf16-autocast|bf16))?[ ,]+(?P<tokens>\d+) tokens.*?(?P<rate>[\d.]+) tok/s, peak RSS (?P<rss>\d+) MB")


def parse(lines):
    rows = []
    for line in lines:
        m = LINE.match(line.strip())
        if not m:
            continue
        mods = m.group("mods").strip()
        prec = m.group("prec1") or ""
        if "bf16" in mods or prec.startswith("bf16"):
            prec = "bf16"
        else:
            prec = "f32"
        variant = "checkpointed" if "checkpointed" in mods else ""
        detail = mods.replace("bf16-mixed", "").replace("bf16-autocast", "").strip()
        setting = f"{'SmolLM2 ' if m.group('model') else ''}{m.group('kind')} r{m.group('rank')}, {m.group('tokens')} tokens"
        rows.append(dict(side=m.group("side"), setting=setting, prec=prec, variant=variant, detail=detail,
                         rate=float(m.group("rate")), rss=float(m.group("rss"))))
    return rows


def main():
    text = open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines()
    rows = parse(text)

    def next_torch(i, setting, prec):
        # the PyTorch run of the same setting that follows (each script runs distill first)
        return next((t for t in rows[i + 1:] if t["side"] == "torch" and t["setting"] == setting and t["prec"] == prec), None)

    out, verdict = [], []
    for i, r in enumerate(rows):
        if r["side"] != "distill":
            continue
        twin = None if r["variant"] else next_torch(i, r["setting"], r["prec"])
        scored = twin is not None
        against = "PyTorch " + ("bf16 autocast" if r["prec"] == "bf16" else "f32")
        if twin is None:
            twin = next_torch(i, r["setting"], "f32")
            against = "PyTorch f32 (not scored)"
        if twin is None:
            continue
        speed, mem = r["rate"] / twin["rate"], r["rss"] / twin["rss"]
        label = f"{r['setting']} {r['prec']}" + (f" {r['detail']}" if r["detail"] else "")
        ok = speed >= 1.0 and mem <= 1.0
        if scored:
            verdict.append((label, ok))
        out.append(f"| {label} | {r['rate']:.1f} tok/s, {r['rss']:.0f} MB | {against}: {twin['rate']:.1f} tok/s, "
                   f"{twin['rss']:.0f} MB | {speed:.2f}x | {mem:.2f} | {'yes' if ok else 'NO'}{'' if scored else ' (info)'} |")
    if not out:
        print("train_ratios: no distill/PyTorch pairs found in", sys.argv[1])
        return
    print("| setting | distill | against | speed ratio | memory ratio | >= 1.0x speed at <= 1.0x memory |")
    print("|---|---|---|---|---|---|")
    print("\n".join(out))
    bad = [label for label, ok in verdict if not ok]
    print(f"scored settings: {len(verdict)}, distill >= 1.0x PyTorch's tokens/s at <= 1.0x its peak memory in "
          f"{len(verdict) - len(bad)}" + (f"; not in: {', '.join(bad)}" if bad else ""))


if __name__ == "__main__":
    main()
