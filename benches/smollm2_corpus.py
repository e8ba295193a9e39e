"""The training corpus of the SmolLM2 benches: 200 arithmetic chats with short traces.
Usage: python3 smollm2_corpus.py OUT.jsonl"""
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(200):
        a, b = (i * 7919) % 1000, (i * 104729 + 17) % 1000
        steps = " ".join(f"Column {k}: add the digits and carry." for k in range(3))
        f.write(json.dumps({"id": f"a{i}", "messages": [
            {"role": "user", "content": f"What is {a} + {b}? Think step by step."},
            {"role": "assistant", "content": f"<think>\n{steps} So {a} + {b} = {a + b}.\n</think>\n\nThe answer is {a + b}."}]}) + "\n")
