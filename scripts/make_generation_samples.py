"""Write the bundled DS-1000 and counselling samples: small, deterministic, in the published schemas.

    python scripts/make_generation_samples.py

ds1000.jsonl: ``prompt``, ``reference_code``, ``metadata`` (problem_id, library_problem_id, library,
test_case_cnt, perturbation_type, perturbation_origin_id) and ``code_context``, as in xlangai/DS-1000.
counselling.jsonl: ``Context`` and ``Response``, as in Amod/mental_health_counseling_conversations.
Rows come from templates so a tiny model can learn them; every prompt / context is unique.
"""

import json
import random
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "lit_lora" / "data" / "samples"

DS_TASKS = {
    "Pandas": ("import pandas as pd", "df = pd.DataFrame({cols})", [
        ("I want the mean of column {c} of my DataFrame.", "result = df['{c}'].mean()"),
        ("How do I sort the DataFrame by column {c}?", "result = df.sort_values('{c}')"),
        ("How can I drop the column {c}?", "result = df.drop(columns=['{c}'])"),
        ("I need the largest value of column {c}.", "result = df['{c}'].max()"),
    ]),
    "Numpy": ("import numpy as np", "a = np.array({vals})", [
        ("How do I get the sum of the array a?", "result = a.sum()"),
        ("How do I reshape the array a into {n} rows?", "result = a.reshape({n}, -1)"),
        ("I want the index of the largest element of a.", "result = a.argmax()"),
        ("How can I reverse the array a?", "result = a[::-1]"),
    ]),
    "Scipy": ("from scipy import stats\nimport numpy as np", "x = np.array({vals})", [
        ("How do I compute the z-scores of x?", "result = stats.zscore(x)"),
        ("I need the skewness of x.", "result = stats.skew(x)"),
    ]),
    "Sklearn": ("from sklearn.preprocessing import StandardScaler, MinMaxScaler\nimport numpy as np",
                "X = np.array({vals}).reshape(-1, 1)", [
        ("How do I standardise X to zero mean and unit variance?", "result = StandardScaler().fit_transform(X)"),
        ("How do I scale X to the range 0 to 1?", "result = MinMaxScaler().fit_transform(X)"),
    ]),
}
COLUMNS = ["price", "amount", "score", "age", "weight", "height", "count", "rate"]


def ds1000_rows(n=160, seed=0):
    rng = random.Random(seed)
    rows, seen, per_lib = [], set(), {}
    libs = list(DS_TASKS)
    while len(rows) < n:
        lib = libs[len(rows) % len(libs)]
        imports, setup, tasks = DS_TASKS[lib]
        question, code = rng.choice(tasks)
        c, n_rows = rng.choice(COLUMNS), rng.choice([2, 3, 4])
        vals = [rng.randint(0, 9) for _ in range(12)]
        cols = {c: vals[:4], rng.choice([x for x in COLUMNS if x != c]): vals[4:8]}
        setup_line = setup.format(cols=cols, vals=vals)
        question, code = question.format(c=c, n=n_rows), code.format(c=c, n=n_rows)
        prompt = (f"Problem:\n{question}\n\nA:\n<code>\n{imports}\n{setup_line}\n</code>\n"
                  f"result = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n")
        if prompt in seen:
            continue
        seen.add(prompt)
        per_lib[lib] = per_lib.get(lib, -1) + 1
        metadata = {"problem_id": len(rows), "library_problem_id": per_lib[lib], "library": lib,
                    "test_case_cnt": 1, "perturbation_type": "Origin", "perturbation_origin_id": len(rows)}
        context = f"{imports}\n\ndef generate_test_case():\n    {setup_line}\n    return locals()\n"
        rows.append({"prompt": prompt, "reference_code": code, "metadata": metadata, "code_context": context})
    return rows


FEELINGS = [
    ("anxious", "anxiety", "Try slow breathing for a few minutes and write down what worries you most."),
    ("lonely", "loneliness", "Reaching out to one person you trust this week can be a small first step."),
    ("overwhelmed", "stress", "Break the work into small pieces and plan one short break each day."),
    ("sad", "low mood", "Gentle routines like a daily walk and regular sleep can help your mood."),
    ("angry", "anger", "Notice the first signs of anger and give yourself a pause before you answer."),
]
SITUATIONS = ["about my exams", "at work", "since I moved to a new city", "after an argument with my partner",
              "when I think about the future", "around my family", "at night", "about money",
              "since my friend left", "every morning"]
EXTRAS = ["I can't sleep.", "I don't know who to talk to.", "It has lasted for weeks.", "It keeps getting worse.",
          "I feel tired all the time."]


def counselling_rows(n=150, seed=0):
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        feeling, topic, advice = rng.choice(FEELINGS)
        situation, extra = rng.choice(SITUATIONS), rng.choice(EXTRAS)
        context = f"I feel {feeling} {situation}. {extra}"
        if context in seen:
            continue
        seen.add(context)
        response = (f"It sounds like you are dealing with {topic} {situation}, and that is hard. "
                    f"{advice} If it keeps going, talking to a counsellor can help.")
        rows.append({"Context": context, "Response": response})
    return rows


def write(name, rows):
    path = SAMPLES / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    write("ds1000.jsonl", ds1000_rows())
    write("counselling.jsonl", counselling_rows())
