"""Driver of benches/collect_bench.sh: runs `distill collect` (one runtime thread) and an
AsyncOpenAI collector doing the same job (same requests, same concurrency, reasoning split,
one JSON line written per sample) against the same teacher-sim, and prints the figures."""

import argparse
import asyncio
import json
import os
import resource
import subprocess
import time

from openai import AsyncOpenAI

INSTR = "Please reason step by step, and put your final answer within \\boxed{}."


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_distill(args, stream, out):
    cmd = [args.bin, "collect", "--prompts", args.prompts, "--endpoint", args.url, "--model", "r1",
           "--out", out, "--concurrency", str(args.concurrency), "--threads", "1", "--no-progress"]
    if stream:
        cmd.append("--stream")
    cpu0, t0 = children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, env={**os.environ, "OPENAI_API_KEY": "sk-bench"})
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    with open(os.path.join(out, "summary.json")) as f:
        n = json.load(f)["samples_written"]
    return n, wall, cpu


def split(content, reasoning):
    if reasoning:
        return reasoning.strip(), content.lstrip()
    if "</think>" in content:
        head, _, tail = content.partition("</think>")
        return head.replace("<think>", "", 1).strip(), tail.lstrip()
    return "", content


async def python_job(args, stream, out_path):
    client = AsyncOpenAI(base_url=args.url, api_key="sk-bench", max_retries=8)
    prompts = [json.loads(l) for l in open(args.prompts)]
    sem = asyncio.Semaphore(args.concurrency)
    out = open(out_path, "w")

    async def one(p):
        async with sem:
            messages = [{"role": "user", "content": p["prompt"] + "\n\n" + INSTR}]
            if stream:
                s = await client.chat.completions.create(model="r1", messages=messages, temperature=0.6,
                                                         top_p=0.95, seed=0, stream=True,
                                                         stream_options={"include_usage": True})
                content, finish, usage = [], None, None
                async for ch in s:
                    if ch.usage:
                        usage = ch.usage
                    for c in ch.choices:
                        if c.delta.content:
                            content.append(c.delta.content)
                        finish = c.finish_reason or finish
                content = "".join(content)
                reasoning = None
            else:
                r = await client.chat.completions.create(model="r1", messages=messages, temperature=0.6,
                                                         top_p=0.95, seed=0)
                m = r.choices[0].message
                content, finish, usage = m.content or "", r.choices[0].finish_reason, r.usage
                reasoning = getattr(m, "reasoning_content", None)
            reasoning, answer = split(content, reasoning)
            rec = {"id": p["id"] + "/0", "prompt_id": p["id"], "messages": messages, "reasoning": reasoning,
                   "content": answer, "finish_reason": finish,
                   "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}}
            out.write(json.dumps(rec) + "\n")

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out.close()
    await client.close()
    return len(prompts), wall, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    print(f"collect bench: zero-latency teacher-sim (1 thread), concurrency {args.concurrency}, "
          f"{os.cpu_count()} cores; client CPU = user+sys of the client process only")
    print(f"{'mode':<11} {'client':<20} {'requests':>8} {'wall s':>7} {'req/s':>8} {'CPU ms/req':>10} {'req/CPU-s':>10}")
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        rows = []
        n, wall, cpu = run_distill(args, stream, os.path.join(args.work, f"distill-{mode}"))
        rows.append(("distill collect", n, wall, cpu))
        n, wall, cpu = asyncio.run(python_job(args, stream, os.path.join(args.work, f"py-{mode}.jsonl")))
        rows.append(("python AsyncOpenAI", n, wall, cpu))
        for name, n, wall, cpu in rows:
            print(f"{mode:<11} {name:<20} {n:>8} {wall:>7.2f} {n / wall:>8.0f} {1000 * cpu / n:>10.3f} {n / cpu:>10.0f}")
        (_, dn, dw, dc), (_, pn, pw, pc) = rows
        print(f"{mode:<11} ratio distill/python: {(dn / dw) / (pn / pw):.1f}x req/s, "
              f"{(dn / dc) / (pn / pc):.1f}x requests per client CPU-second (per core)")


if __name__ == "__main__":
    main()
