"""An rpt environment plug-in: document k is the "text" of line k of a JSONL file."""
import json, sys

docs = [json.loads(l)["text"] for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
for line in sys.stdin:
    k = json.loads(line)["document"]
    print(json.dumps({"text": docs[k]} if k < len(docs) else {"end": True}), flush=True)
