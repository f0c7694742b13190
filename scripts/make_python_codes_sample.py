"""Write lit_lora/data/samples/python_codes_25k.jsonl: a small, deterministic sample in the exact
schema of the python-codes-25k dataset (instruction, input, output, text).

    python scripts/make_python_codes_sample.py

The rows are generated from templates so that a tiny model can learn them in a few hundred steps
(the demo and the loss-regression tests rely on that); the schema, not the content, is the point.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "lit_lora" / "data" / "samples" / "python_codes_25k.jsonl"

OPS = [
    ("sum", "+", "returns the sum of"),
    ("difference", "-", "returns the difference of"),
    ("product", "*", "returns the product of"),
    ("quotient", "/", "returns the quotient of"),
    ("power", "**", "raises the first number to the power of the second for"),
    ("modulo", "%", "returns the remainder of dividing"),
]
NAMES = ["a", "b", "x", "y", "m", "n", "p", "q"]
LIST_TASKS = [
    ("maximum", "max({v})", "Find the maximum of the list"),
    ("minimum", "min({v})", "Find the minimum of the list"),
    ("length", "len({v})", "Count the elements of the list"),
    ("total", "sum({v})", "Add up all elements of the list"),
    ("sorted", "sorted({v})", "Sort the list"),
    ("reversed", "list(reversed({v}))", "Reverse the list"),
]
STRING_TASKS = [
    ("upper", "{v}.upper()", "Convert the string to upper case"),
    ("lower", "{v}.lower()", "Convert the string to lower case"),
    ("words", "{v}.split()", "Split the string into words"),
    ("stripped", "{v}.strip()", "Remove surrounding whitespace from the string"),
    ("title", "{v}.title()", "Capitalise every word of the string"),
]
WORDS = ["hello world", "lit lora", "python code", "fine tune", "  padded text  ", "data science"]


def arithmetic_row(rng):
    name, op, phrase = rng.choice(OPS)
    a, b = rng.sample(NAMES, 2)
    func = f"{name}_{a}_{b}"
    instruction = f"Write a Python function that {phrase} {a} and {b}."
    output = f"```python\ndef {func}({a}, {b}):\n    return {a} {op} {b}\n```"
    return instruction, "", output


def list_row(rng):
    name, expr, phrase = rng.choice(LIST_TASKS)
    values = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
    instruction = f"{phrase} using Python."
    code = f"values = {values}\n{name} = {expr.format(v='values')}\nprint({name})"
    return instruction, f"values = {values}", f"```python\n{code}\n```"


def string_row(rng):
    name, expr, phrase = rng.choice(STRING_TASKS)
    text = rng.choice(WORDS)
    instruction = f"{phrase} in Python."
    code = f"text = {text!r}\n{name} = {expr.format(v='text')}\nprint({name})"
    return instruction, f"text = {text!r}", f"Here you go:\n```python\n{code}\n```"


def to_text(instruction, input_, output):
    """The dataset's `text` column: the instruction, the input if any, then the answer."""
    parts = [instruction] + ([input_] if input_ else []) + [output]
    return " ".join(parts)


def main(rows=320, seed=0):
    rng = random.Random(seed)
    makers = [arithmetic_row, list_row, string_row]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    seen = set()  # rows are unique, so a validation split never repeats a training row
    with OUT.open("w") as f:
        i = 0
        while len(seen) < rows:
            instruction, input_, output = makers[i % len(makers)](rng)
            i += 1
            if (instruction, input_) in seen:
                continue
            seen.add((instruction, input_))
            row = {"instruction": instruction, "input": input_, "output": output,
                   "text": to_text(instruction, input_, output)}
            f.write(json.dumps(row) + "\n")
    print(f"wrote {rows} rows to {OUT}")


if __name__ == "__main__":
    main()
