"""prefix_match as an rpt reward plug-in: one JSON line per group in, {"rewards": [...]} out."""
import base64, json, sys

def prediction(text):
    """The bytes inside the last closed \\boxed{...} after the last </think>; None if there is none."""
    end = text.rfind(b"</think>")
    tail, found, i = text[end + 8:], None, 0
    while end >= 0 and (i := tail.find(b"\\boxed{", i)) >= 0:
        depth, j = 1, i + 7
        while j < len(tail) and depth:
            depth += {123: 1, 125: -1}.get(tail[j], 0)
            j += 1
        if depth:
            return None
        found, i = tail[i + 7 : j - 1], j
    return found

for line in sys.stdin:
    group = json.loads(line)
    truth = base64.b64decode(group["continuation_b64"])
    def score(c):
        y = prediction(base64.b64decode(c))
        return float(y is not None and truth.startswith(y) and len(y) in group["boundaries"])
    print(json.dumps({"rewards": [score(c) for c in group["completions_b64"]]}), flush=True)
