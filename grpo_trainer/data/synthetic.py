"""Seeded generator of GSM8K-style arithmetic word problems.

Lets the trainer run (and its tests pass) without downloading GSM8K. A problem is a stock of
items (cookies, dollars, stickers, ...) that changes through 1..`difficulty` operations; each
operation is one worked solution line with a GSM8K calculator annotation::

    Maya then has 12 + 5 = <<12+5=17>>17 cookies.
    ...
    #### 17

Every intermediate and final value is a positive integer: subtraction never goes to zero or
below and division is only chosen with a divisor of the current value.

Train/test disjointness: a problem belongs to the split given by a stable hash of its question
text (`split_of`): "test" when the first 8 bytes of sha256(question) mod 5 == 0 (about 20 %),
otherwise "train". `make_problems` draws candidates from an RNG seeded by
(seed, split, difficulty) and keeps those that hash into the requested split (and are not
duplicates) until n are collected. So no test question can ever appear in any train list, for
any seed or difficulty.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

SPLITS = ("train", "test")
TEST_MODULUS = 5  # 1 in TEST_MODULUS question hashes lands in "test"

# Per difficulty (index = difficulty - 1). Difficulty 1 keeps every operand <= 20.
START_MAX = (20, 50, 100, 500)  # starting amount and add/sub operand
FACTOR_MAX = (5, 6, 9, 12)  # multiplier / divisor, drawn from 2..FACTOR_MAX
VALUE_CAP = (100, 1000, 5000, 20000)  # keeps chains of products readable

_NAMES = (
    ("Maya", "she"), ("Liam", "he"), ("Sofia", "she"), ("Noah", "he"), ("Aisha", "she"),
    ("Mateo", "he"), ("Chloe", "she"), ("Ethan", "he"), ("Priya", "she"), ("Kenji", "he"),
    ("Olivia", "she"), ("Lucas", "he"), ("Fatima", "she"), ("Diego", "he"), ("Hannah", "she"),
    ("Omar", "he"), ("Grace", "she"), ("Samuel", "he"), ("Elena", "she"), ("Jamal", "he"),
    ("Nora", "she"), ("Tomas", "he"), ("Zara", "she"), ("Felix", "he"), ("Lucia", "she"),
    ("Arjun", "he"), ("Ines", "she"), ("Caleb", "he"), ("Mei", "she"), ("Ravi", "he"),
)
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}  # subj, obj, poss

# Generic phrasings for the two operations that read the same in every scenario.
_MUL = (
    "Later, {name} ends up with {b} times as many {unit} as {p} had at that point.",
    "By the end of the week, {name} has {b} times as many {unit} as before.",
)
_DIV = (
    "{Name} divides all of the {unit} equally into {b} groups and keeps only one group.",
    "{Name} shares the {unit} equally among {b} people, counting {obj}self, and keeps {poss} share.",
)
_CONNECTIVES = ("Then", "After that,", "Next,")
_SOLUTION = {
    "+": "{Name} then has {x} + {b} = <<{x}+{b}={r}>>{r} {unit}.",
    "-": "After that, {name} has {x} - {b} = <<{x}-{b}={r}>>{r} {unit}.",
    "*": "Now {p} has {x} * {b} = <<{x}*{b}={r}>>{r} {unit}.",
    "/": "{Name} keeps {x} / {b} = <<{x}/{b}={r}>>{r} {unit}.",
}


@dataclass(frozen=True)
class Scenario:
    unit: str  # plural noun used in the solution lines
    start: tuple[str, ...]
    add: tuple[str, ...]
    sub: tuple[str, ...]
    question: tuple[str, ...]
    fills: dict[str, tuple[str, ...]] = field(default_factory=dict)


_Q_HAVE = ("How many {unit} does {name} have now?", "How many {unit} does {name} end up with?")
_Q_MONEY = ("How many dollars does {name} have now?", "How much money, in dollars, is left?")

SCENARIOS: dict[str, Scenario] = {
    "baking": Scenario(
        "cookies",
        ("{Name} bakes {a} cookies for a bake sale.", "{Name} takes a tray of {a} cookies out of the oven."),
        ("{P} bakes another batch of {b} cookies.", "{friend} brings over {b} more cookies."),
        ("{friend} buys {b} of the cookies.", "{P} drops {b} cookies on the floor and throws them away."),
        _Q_HAVE,
    ),
    "shopping": Scenario(
        "dollars",
        ("{Name} goes to the mall with ${a} in {poss} wallet.", "{Name} has ${a} to spend at the market."),
        ("{friend} pays {obj} back ${b} that {p} was owed.", "{P} returns {item} and gets ${b} back."),
        ("{P} spends ${b} on {item}.", "{P} pays ${b} for {item}."),
        _Q_MONEY,
        {"item": ("a scarf", "a book", "a pair of shoes", "a backpack", "a lamp", "a board game")},
    ),
    "savings": Scenario(
        "dollars",
        ("{Name} has ${a} saved in a jar.", "{Name}'s piggy bank holds ${a}."),
        ("{P} earns ${b} {job} and saves all of it.", "{P} adds ${b} of birthday money."),
        ("{P} takes out ${b} to buy a gift for {friend}.", "{P} uses ${b} to pay for a movie ticket."),
        _Q_MONEY,
        {"job": ("walking dogs", "mowing lawns", "babysitting", "washing cars")},
    ),
    "classroom": Scenario(
        "stickers",
        ("{Name}, a teacher, has {a} stickers for {poss} class.", "Teacher {Name} buys {a} stickers for {poss} students."),
        ("The school office sends {b} more stickers.", "{friend} donates a pack of {b} stickers."),
        ("{b} stickers are handed out to students who finished their homework.", "{b} stickers get torn and are thrown away."),
        ("How many stickers are left?", "How many stickers remain for the class?"),
    ),
    "travel": Scenario(
        "photos",
        ("On a trip to {place}, {name} takes {a} photos on the first day.", "{Name} has {a} photos from a visit to {place}."),
        ("{P} takes {b} more photos at the {sight}.", "{friend} sends {obj} {b} photos from the same trip."),
        ("{P} deletes {b} blurry photos.", "{P} removes {b} photos that look the same."),
        ("How many photos does {name} have now?", "How many photos from {place} does {name} keep?"),
        {"place": ("Lisbon", "Kyoto", "Nairobi", "Lima", "Oslo", "Cairo"),
         "sight": ("old bridge", "harbor", "museum", "castle", "night market")},
    ),
    "orchard": Scenario(
        "apples",
        ("{Name} picks {a} apples at an orchard.", "A basket on {name}'s farm holds {a} apples."),
        ("{P} picks {b} more apples from the last tree.", "{friend} adds {b} apples to the basket."),
        ("{b} of the apples are bruised, so {p} sets them aside.", "{P} uses {b} apples to make a pie."),
        _Q_HAVE,
    ),
    "library": Scenario(
        "books",
        ("A small library run by {name} has {a} books on one shelf.", "{Name} owns {a} books."),
        ("{P} buys {b} books at a used book sale.", "{friend} donates {b} books."),
        ("{P} gives {b} books to a school.", "{b} books are lent out and not returned."),
        _Q_HAVE,
    ),
    "marbles": Scenario(
        "marbles",
        ("{Name} has a bag of {a} marbles.", "{Name} starts the game with {a} marbles."),
        ("{P} wins {b} marbles from {friend}.", "{P} finds {b} marbles under the couch."),
        ("{P} loses {b} marbles in a game.", "{P} trades away {b} marbles for a toy car."),
        _Q_HAVE,
    ),
    "beach": Scenario(
        "seashells",
        ("{Name} collects {a} seashells on the beach.", "{Name} has a bucket with {a} seashells."),
        ("{P} finds {b} more seashells near the rocks.", "{friend} gives {obj} {b} seashells."),
        ("{b} of the seashells turn out to be broken, so {p} throws them back.", "{P} gives {b} seashells to {friend}."),
        _Q_HAVE,
    ),
    "arcade": Scenario(
        "tickets",
        ("{Name} wins {a} tickets at the arcade.", "{Name} has {a} prize tickets."),
        ("{P} wins {b} more tickets on the racing game.", "{friend} hands {obj} {b} leftover tickets."),
        ("{P} spends {b} tickets on {prize}.", "{P} trades {b} tickets for {prize}."),
        ("How many tickets does {name} have left?", "How many tickets does {name} end up with?"),
        {"prize": ("a yo-yo", "a bouncy ball", "a keychain", "a toy robot")},
    ),
    "farm": Scenario(
        "eggs",
        ("{Name}'s hens lay {a} eggs.", "{Name} collects {a} eggs from the coop."),
        ("{P} collects {b} more eggs in the afternoon.", "{friend} brings {b} eggs from a neighbor's farm."),
        ("{P} uses {b} eggs to make breakfast.", "{b} eggs crack on the way to the kitchen."),
        _Q_HAVE,
    ),
    "garden": Scenario(
        "flowers",
        ("{Name} plants {a} flowers in {poss} garden.", "{Name}'s garden has {a} flowers in bloom."),
        ("{P} plants {b} more flowers along the fence.", "{friend} gives {obj} {b} flowers to plant."),
        ("{P} cuts {b} flowers for a bouquet.", "Rabbits eat {b} of the flowers."),
        ("How many flowers are in the garden now?", "How many flowers does {name} have now?"),
    ),
    "stamps": Scenario(
        "stamps",
        ("{Name} has {a} stamps in {poss} collection.", "{Name}'s stamp album holds {a} stamps."),
        ("{P} buys {b} stamps from {place}.", "{friend} mails {obj} {b} stamps."),
        ("{P} trades {b} stamps with {friend}.", "{P} sells {b} duplicate stamps."),
        _Q_HAVE,
        {"place": ("Brazil", "Japan", "Kenya", "Norway", "Peru", "India")},
    ),
    "cards": Scenario(
        "trading cards",
        ("{Name} owns {a} trading cards.", "{Name} keeps {a} trading cards in a box."),
        ("{P} opens packs that contain {b} new cards.", "{friend} gives {obj} {b} cards."),
        ("{P} trades {b} cards to {friend}.", "{P} loses {b} cards on the bus."),
        ("How many trading cards does {name} have now?", "How many cards does {name} end up with?"),
    ),
}


def split_of(question: str) -> str:
    """The split a question belongs to, from a stable hash of its text (see module doc)."""
    h = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")
    return "test" if h % TEST_MODULUS == 0 else "train"


def _pick_op(rng: random.Random, x: int, d: int) -> tuple[str, int] | None:
    """A random feasible (op, operand) for current value x, keeping every result a positive int."""
    amax, fmax, cap = START_MAX[d - 1], FACTOR_MAX[d - 1], VALUE_CAP[d - 1]
    options: list[tuple[str, int]] = []
    if x + 1 <= cap:
        options.append(("+", rng.randint(1, min(amax, cap - x))))
    if x >= 2:
        options.append(("-", rng.randint(1, min(amax, x - 1))))
    if x * 2 <= cap:
        options.append(("*", rng.randint(2, min(fmax, cap // x))))
    divisors = [b for b in range(2, fmax + 1) if x % b == 0]
    if divisors:
        options.append(("/", rng.choice(divisors)))
    return rng.choice(options) if options else None


def _apply(op: str, x: int, b: int) -> int:
    if op == "+":
        return x + b
    if op == "-":
        return x - b
    if op == "*":
        return x * b
    return x // b


def _then(rng: random.Random, sentence: str) -> str:
    """Prefix a connective so chained steps read as a sequence of events."""
    first, rest = sentence.split(" ", 1)
    if first in ("She", "He"):
        first = first.lower()
    return f"{rng.choice(_CONNECTIVES)} {first} {rest}"


def _one_problem(rng: random.Random, d: int) -> dict[str, str]:
    scenario = SCENARIOS[rng.choice(sorted(SCENARIOS))]
    name, pron = rng.choice(_NAMES)
    friend = rng.choice([n for n, _ in _NAMES if n != name])
    subj, obj, poss = _PRONOUNS[pron]
    ctx = {"name": name, "Name": name, "p": subj, "P": subj.capitalize(), "obj": obj,
           "poss": poss, "friend": friend, "unit": scenario.unit}
    for key, values in scenario.fills.items():
        ctx[key] = rng.choice(values)

    x = rng.randint(1, START_MAX[d - 1])
    sentences = [rng.choice(scenario.start).format(a=x, **ctx)]
    solution = []
    used: set[str] = set()
    for step in range(rng.randint(1, d)):
        picked = _pick_op(rng, x, d)
        if picked is None:  # unreachable with the tables above; stop the chain rather than loop
            break
        op, b = picked
        pool = {"+": scenario.add, "-": scenario.sub, "*": _MUL, "/": _DIV}[op]
        fresh = [t for t in pool if t not in used] or list(pool)  # avoid repeating a sentence
        template = rng.choice(fresh)
        used.add(template)
        sentence = template.format(b=b, **ctx)
        if step > 0 and op in "+-":
            sentence = _then(rng, sentence)
        sentences.append(sentence)
        r = _apply(op, x, b)
        solution.append(_SOLUTION[op].format(x=x, b=b, r=r, **ctx))
        x = r
    sentences.append(rng.choice(scenario.question).format(**ctx))
    question = " ".join(s[0].upper() + s[1:] for s in sentences)
    return {"question": question, "answer": "\n".join(solution) + f"\n#### {x}"}


def make_problems(n: int, seed: int, difficulty: int, split: str = "train") -> list[dict[str, str]]:
    """`n` distinct problems {"question", "answer"} of the given split; same args -> same list.

    difficulty (1..4) is the maximum number of operations (each problem has 1..difficulty,
    drawn uniformly) and also scales operand sizes (START_MAX / FACTOR_MAX / VALUE_CAP).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(difficulty, int) or not 1 <= difficulty <= 4:
        raise ValueError(f"difficulty must be an int in 1..4, got {difficulty!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # A str seed goes through sha512 in `random`, so it is stable across processes and runs.
    rng = random.Random(f"grpo_trainer.synthetic:{seed}:{split}:{difficulty}")
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    max_tries = 50 * n + 1000
    for _ in range(max_tries):
        if len(out) == n:
            break
        prob = _one_problem(rng, difficulty)
        q = prob["question"]
        if q in seen or split_of(q) != split:
            continue
        seen.add(q)
        out.append(prob)
    if len(out) < n:
        raise ValueError(
            f"could only generate {len(out)} distinct {split} problems at difficulty {difficulty}; "
            f"ask for fewer (n={n}) or raise the difficulty"
        )
    return out
