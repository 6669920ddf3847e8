"""The example prefix_match plug-in with a fault injected, for the plug-in fault tests.

Arguments: FAULT AFTER STATE_FILE [once]. Good answers are counted in STATE_FILE across every process
(restarts included). Once AFTER have been given, the plug-in commits FAULT: `crash` (exits 3), `hang`,
`malformed` (a line that is not JSON), `count` (one reward too few) or `nan`. With `once` it does so a
single time and then behaves; without, it commits the fault on every answer from then on.
"""
import fcntl, json, os, sys, time

fault, after, state_file, *once = sys.argv[1:]
sys.argv = sys.argv[:1]
real_stdout = sys.stdout


def load():
    try:
        with open(state_file) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"answered": 0, "faulted": 0}


def save(state):
    tmp = f"{state_file}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_file)


class Faulty:
    """Stands in for stdout: passes good answers through until the fault is due."""

    def write(self, text):
        if not text.strip():
            return real_stdout.write(text)
        # Several verifiers run a process each: the count is kept under a lock.
        with open(state_file + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = load()
            due = state["answered"] >= int(after) and not (once and state["faulted"])
            state["faulted" if due else "answered"] += 1
            save(state)
        if due:
            print(f"reward_faults: injecting {fault} after {state['answered']} answers", file=sys.stderr, flush=True)
            if fault == "crash":
                os._exit(3)
            if fault == "hang":
                time.sleep(3600)
            rewards = json.loads(text)["rewards"]
            text = {
                "malformed": "rewards: " + ", ".join(map(str, rewards)),
                "count": json.dumps({"rewards": rewards[:-1]}),
                "nan": '{"rewards": [NaN' + ", 0.0" * (len(rewards) - 1) + "]}",
            }[fault]
        return real_stdout.write(text)

    def flush(self):
        real_stdout.flush()


sys.stdout = Faulty()
example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "reward_prefix_match.py")
exec(compile(open(example).read(), example, "exec"))
