"""Answer templates for wafer-map questions, in English and Chinese.

Answers are kept structured and few-variant so a small model can learn them: every
pattern is named by its canonical display name (`Pattern.english` in English,
`Pattern.chinese` in Chinese), numbers are copied from `WaferMap.facts()` (the facts the
model also sees in its prompt), and places come from `data_tools.locate`. Each function
is pure: same inputs and variant, same text. `variant` picks one of a few phrasings.

A recognition answer names every pattern present and nothing else (or says the map is
normal), so it can be parsed back into the exact pattern set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from data_tools.knowledge import KNOWLEDGE, SEPARATION_STEPS, pair_notes
from data_tools.locate import PatternLocation
from data_tools.taxonomy import BY_KEY, NORMAL, canonical_set
from data_tools.wafer_map import SECTOR_WORDS, SECTOR_WORDS_ZH, ZONE_WORDS_ZH

LANGUAGES = ("en", "zh")
#: Count questions and their answers: which number is asked for.
COUNT_TOPICS = ("yield", "failing", "dies", "good", "zone", "clusters", "summary")

_NUM_EN = {1: "one", 2: "two", 3: "three", 4: "four"}
_NUM_ZH = {1: "一", 2: "两", 3: "三", 4: "四"}
_ZONE_EN = {"center": "centre", "middle": "middle", "edge": "edge"}
_ORIENT_EN = {
    "horizontal": "horizontal",
    "vertical": "vertical",
    "rising": "diagonal (lower left to upper right)",
    "falling": "diagonal (upper left to lower right)",
}
_ORIENT_ZH = {"horizontal": "水平", "vertical": "竖直", "rising": "从左下到右上的斜", "falling": "从左上到右下的斜"}


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")


def other_language(language: str) -> str:
    """The other of the two answer languages ("en" ↔ "zh")."""
    _check_language(language)
    return LANGUAGES[1 - LANGUAGES.index(language)]


def name(key: str, language: str) -> str:
    """Canonical display name of a pattern key."""
    _check_language(language)
    return BY_KEY[key].english if language == "en" else BY_KEY[key].chinese


def join_names(keys: Sequence[str], language: str) -> str:
    """``A``, ``A and B``, ``A, B and C`` in English; ``A、B、C`` in Chinese."""
    names = [name(k, language) for k in keys]
    if language == "zh":
        return "、".join(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _pick(options: Sequence[str], variant: int) -> str:
    return options[variant % len(options)]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------- recognition


def recognition_answer(patterns: Iterable[str], language: str = "en", variant: int = 0) -> str:
    """Names every pattern present (canonical display names), or says the wafer is normal."""
    _check_language(language)
    keys = canonical_set(patterns)
    n = len(keys)
    if language == "en":
        if not keys:
            return _pick(
                (
                    "This wafer is normal: no defect pattern is present.",
                    "No defect pattern detected; this wafer is normal.",
                    "I see no defect pattern on this wafer; it is normal.",
                ),
                variant,
            )
        s = "" if n == 1 else "s"
        listed = join_names(keys, "en")
        return _pick(
            (
                f"This wafer shows {_NUM_EN[n]} defect pattern{s}: {listed}.",
                f"Detected defect pattern{s}: {listed}.",
                f"I see {_NUM_EN[n]} defect pattern{s} on this wafer: {listed}.",
            ),
            variant,
        )
    if not keys:
        return _pick(
            ("这片晶圆正常，没有缺陷模式。", "未检测到缺陷模式，这片晶圆正常。", "这片晶圆上没有缺陷模式，属于正常。"),
            variant,
        )
    listed = join_names(keys, "zh")
    return _pick(
        (
            f"这片晶圆有{_NUM_ZH[n]}种缺陷模式：{listed}。",
            f"检测到的缺陷模式：{listed}。",
            f"这片晶圆上可以看到{_NUM_ZH[n]}种缺陷模式：{listed}。",
        ),
        variant,
    )


# ---------------------------------------------------------------- location


def _sectors_en(sectors: Sequence[str]) -> str:
    words = " and ".join(SECTOR_WORDS[s] for s in sectors)
    return f"the {words} sector{'s' if len(sectors) > 1 else ''} ({', '.join(sectors)})"


def _sectors_zh(sectors: Sequence[str]) -> str:
    return f"{'和'.join(SECTOR_WORDS_ZH[s] for s in sectors)}扇区（{'、'.join(sectors)}）"


def _zone_count(facts: dict, zone: str) -> tuple[int, int]:
    z = facts["zones"][zone]
    return int(z["failing"]), int(z["dies"])


def location_sentence(loc: PatternLocation, facts: dict, language: str) -> str:
    """One sentence saying where a pattern sits (numbers only from `facts`)."""
    _check_language(language)
    n = name(loc.key, language)
    en = language == "en"
    if loc.spread == "centred":
        f, d = _zone_count(facts, "center")
        return (f"The {n} pattern sits at the wafer centre: {f} of the {d} centre-zone dies fail." if en
                else f"{n}缺陷位于晶圆中心：中心区 {d} 颗芯片中有 {f} 颗失效。")
    if loc.spread == "ring":
        f, d = _zone_count(facts, "middle")
        return (f"The {n} pattern is a ring in the middle zone, between the centre and the edge: "
                f"{f} of the {d} middle-zone dies fail." if en
                else f"{n}缺陷是中间区的一圈，介于中心和边缘之间：中间区 {d} 颗芯片中有 {f} 颗失效。")
    if loc.spread == "all_around":
        f, d = _zone_count(facts, "edge")
        return (f"The {n} pattern runs all the way around the edge: {f} of the {d} edge-zone dies fail." if en
                else f"{n}缺陷沿整圈边缘分布：边缘区 {d} 颗芯片中有 {f} 颗失效。")
    if loc.spread == "edge_local":
        if not loc.sectors:
            return f"The {n} pattern sits on one stretch of the edge." if en else f"{n}缺陷位于边缘的某一段。"
        return (f"The {n} pattern sits on the edge, in {_sectors_en(loc.sectors)}." if en
                else f"{n}缺陷位于边缘的{_sectors_zh(loc.sectors)}。")
    if loc.spread == "local":
        if loc.zone is None:
            return (f"The {n} pattern is a local cluster that merges with the other failures on this map, so its "
                    "exact position is unclear." if en else f"{n}缺陷是一团失效芯片，但在这张图上与其他失效连在一起，具体位置不明确。")
        zone = loc.zone
        if not loc.sectors:
            return (f"The {n} pattern is a local cluster in the {_ZONE_EN[zone]} zone, near the wafer centre." if en
                    else f"{n}缺陷是{ZONE_WORDS_ZH[zone]}靠近晶圆中心的一团失效芯片。")
        return (f"The {n} pattern is a local cluster in the {_ZONE_EN[zone]} zone, in {_sectors_en(loc.sectors)}."
                if en else f"{n}缺陷是{ZONE_WORDS_ZH[zone]}{_sectors_zh(loc.sectors)}的一团失效芯片。")
    if loc.spread == "line":
        if loc.orientation is None or loc.zone is None:
            return (f"The {n} is a thin line of failing dies; its direction is hard to measure on this map." if en
                    else f"{n}是一条由失效芯片组成的细线，这张图上难以测出其方向。")
        where_en = f"in the {_ZONE_EN[loc.zone]} zone"
        where_zh = ZONE_WORDS_ZH[loc.zone]
        if loc.sectors:
            where_en += f", in {_sectors_en(loc.sectors)}"
            where_zh += _sectors_zh(loc.sectors)
        return (f"The {n} is a {_ORIENT_EN[loc.orientation]} line {where_en}." if en
                else f"{n}是{where_zh}的一条{_ORIENT_ZH[loc.orientation]}线。")
    if loc.spread == "whole":
        return (f"The {n} pattern covers the whole wafer: {facts['failing']} of the {facts['dies']} dies fail." if en
                else f"{n}缺陷覆盖整片晶圆：{facts['dies']} 颗芯片中有 {facts['failing']} 颗失效。")
    if loc.spread == "scattered":
        c, m, e = (_zone_count(facts, z)[0] for z in ("center", "middle", "edge"))
        return (f"The {n} failures are scattered over the whole wafer without clusters: {c} in the centre zone, "
                f"{m} in the middle zone and {e} in the edge zone." if en
                else f"{n}失效散布在整片晶圆上，没有成团：中心区 {c} 颗、中间区 {m} 颗、边缘区 {e} 颗。")
    raise ValueError(f"unknown spread {loc.spread!r}")


def location_answer(locations: Sequence[PatternLocation], facts: dict, language: str = "en") -> str:
    """Where every pattern sits; for a normal map, that there is nothing to locate."""
    _check_language(language)
    if not locations:
        if language == "en":
            return f"There is no defect pattern to locate: the wafer is normal and its {facts['failing']} failing " \
                   "dies are isolated."
        return f"没有需要定位的缺陷模式：这片晶圆正常，{facts['failing']} 颗失效芯片是零散的。"
    return (" " if language == "en" else "").join(location_sentence(loc, facts, language) for loc in locations)


# ---------------------------------------------------------------- counts


def cluster_place(cluster: dict, language: str) -> str:
    """Where a cluster of `WaferMap.facts()` sits: "the centre zone (W)" / "中心区（W）"."""
    _check_language(language)
    if language == "en":
        return f"the {_ZONE_EN[cluster['zone']]} zone ({cluster['sector']})"
    return f"{ZONE_WORDS_ZH[cluster['zone']]}（{cluster['sector']}）"


def unrecognised_cluster_note(cluster_size: int, language: str) -> str:
    """A caution for an answer that found no pattern on a map whose failing dies form one large cluster.

    The cluster is not placed: its centre says little for a ring or an arc (an Edge-Ring's is the
    wafer's centre)."""
    _check_language(language)
    if language == "en":
        return (f"The model found no defect pattern, but {cluster_size} failing dies form one connected cluster. "
                "Maps with little random failure can mislead it: check the map by eye.")
    return (f"模型未识别出缺陷模式，但有 {cluster_size} 颗失效芯片连成一片。"
            "随机失效很少的晶圆图可能误导模型，请人工核对。")


def sparse_near_full_note(failing_percent: float, language: str) -> str:
    """A caution for an answer that read a map as Near-full although only `failing_percent` of its dies fail."""
    _check_language(language)
    if language == "en":
        return (f"The model read this map as Near-full, but only {failing_percent:.0f} % of its dies fail (Near-full "
                "maps have two thirds or more failing). A ring or a large cluster may have been taken for it: "
                "check the map by eye.")
    return (f"模型判为近全片失效，但只有 {failing_percent:.0f}% 的芯片失效（近全片失效的晶圆图通常三分之二以上失效）。"
            "可能把环形或大片聚集误判为近全片，请人工核对。")


def count_answer(facts: dict, topic: str, language: str = "en", zone: str = "edge", variant: int = 0) -> str:
    """An exact number from the measured facts. `topic` is one of COUNT_TOPICS."""
    _check_language(language)
    en = language == "en"
    dies, failing, good, y = facts["dies"], facts["failing"], facts["good"], f"{facts['yield']:.2f}%"
    if topic == "yield":
        return _pick(
            (f"The yield is {y}: {good} of the {dies} dies are good.", f"Yield is {y} ({good} good dies out of {dies}).")
            if en else (f"良率为 {y}：{dies} 颗芯片中有 {good} 颗良品。", f"良率是 {y}（{dies} 颗中 {good} 颗良品）。"),
            variant,
        )
    if topic == "failing":
        return _pick(
            (f"{failing} of the {dies} dies fail.", f"There are {failing} failing dies out of {dies}.")
            if en else (f"{dies} 颗芯片中有 {failing} 颗失效。", f"共有 {failing} 颗失效芯片（总数 {dies} 颗）。"),
            variant,
        )
    if topic == "dies":
        return f"The wafer has {dies} dies." if en else f"这片晶圆共有 {dies} 颗芯片。"
    if topic == "good":
        return f"{good} of the {dies} dies are good." if en else f"{dies} 颗芯片中有 {good} 颗良品。"
    if topic == "zone":
        if zone not in facts["zones"]:
            raise ValueError(f"zone must be one of {sorted(facts['zones'])}, got {zone!r}")
        f, d = _zone_count(facts, zone)
        return (f"{f} of the {d} dies in the {_ZONE_EN[zone]} zone fail." if en
                else f"{ZONE_WORDS_ZH[zone]} {d} 颗芯片中有 {f} 颗失效。")
    if topic == "clusters":
        clusters = facts["clusters"]
        largest = clusters["largest"]
        if largest is None:
            return "No die fails, so there are no clusters." if en else "没有失效芯片，因此没有失效团。"
        count = clusters["count"]
        where = cluster_place(largest, language)
        if en:
            return (f"The failing dies form {count} cluster{'s' if count != 1 else ''}; the largest has "
                    f"{largest['size']} dies, in {where}.")
        return f"失效芯片形成 {count} 个失效团；最大的一个有 {largest['size']} 颗，位于{where}。"
    if topic == "summary":
        return (f"{dies} dies, {failing} failing, {good} good: the yield is {y}." if en
                else f"共 {dies} 颗芯片，{failing} 颗失效，{good} 颗良品，良率 {y}。")
    raise ValueError(f"count topic must be one of {COUNT_TOPICS}, got {topic!r}")


# ---------------------------------------------------------------- causes and checks


def _names_intro(keys: Sequence[str], language: str) -> str:
    if language == "en":
        return f"This wafer shows {join_names(keys, 'en')}."
    return f"这片晶圆的缺陷模式是：{join_names(keys, 'zh')}。"


def _separation(keys: Sequence[str], language: str) -> str:
    notes = pair_notes(keys)
    step = SEPARATION_STEPS[0]
    text = (f"To separate the contributors, {step.en}." if language == "en"
            else f"区分各个来源时，{step.zh}。")
    if notes:
        text += (" " + _cap(notes[0].en) + ".") if language == "en" else (notes[0].zh + "。")
    return text


def pattern_cause(key: str, language: str, max_causes: int = 3, variant: int = 0, detail: bool = True) -> str:
    """The likely causes of one pattern, with the reasoning behind the first when `detail`."""
    record = KNOWLEDGE[key]
    causes = record.causes[:max_causes]
    if language == "en":
        listed = "; ".join(c.name.en for c in causes)
        head = _pick((f"Likely causes of the {name(key, 'en')} pattern: {listed}.",
                      f"{name(key, 'en')} usually comes from {listed}."), variant)
        return f"{head} The first is the most common: {causes[0].reasoning.en}." if detail else head
    listed = "；".join(c.name.zh for c in causes)
    head = _pick((f"{name(key, 'zh')}缺陷的可能原因：{listed}。", f"{name(key, 'zh')}缺陷通常来自：{listed}。"), variant)
    return f"{head}最常见的是第一种：{causes[0].reasoning.zh}。" if detail else head


def pattern_check(key: str, language: str, max_checks: int = 3, variant: int = 0, detail: bool = True) -> str:
    """What to check for one pattern, and the first action when `detail`."""
    record = KNOWLEDGE[key]
    checks = record.checks[:max_checks]
    if language == "en":
        listed = "; ".join(c.en for c in checks)
        head = _pick((f"For the {name(key, 'en')} pattern, check {listed}.",
                      f"To chase the {name(key, 'en')} pattern, look at {listed}."), variant)
        return f"{head} Then {record.actions[0].en}." if detail else head
    listed = "；".join(c.zh for c in checks)
    head = _pick((f"针对{name(key, 'zh')}缺陷，请检查：{listed}。", f"排查{name(key, 'zh')}缺陷时，先看：{listed}。"), variant)
    return f"{head}然后{record.actions[0].zh}。" if detail else head


def _normal_text(which: str, language: str) -> str:
    record = KNOWLEDGE[NORMAL]
    if which == "cause":
        cause = record.causes[0]
        if language == "en":
            return f"This wafer is normal, so there is no systematic cause to chase: {cause.reasoning.en}."
        return f"这片晶圆正常，没有需要追查的系统性原因：{cause.reasoning.zh}。"
    if language == "en":
        return f"This wafer is normal. Check {record.checks[0].en}, and {record.checks[1].en}."
    return f"这片晶圆正常。请确认{record.checks[0].zh}，并关注{record.checks[1].zh}。"


def cause_answer(patterns: Iterable[str], language: str = "en", variant: int = 0, intro: bool = True) -> str:
    """Likely causes for every pattern present (and how to separate them in a mixture).

    One or two patterns get their top causes with the reasoning behind the first; three or four
    get two causes each without it, to keep the answer short ("And the second one?" goes deeper).
    """
    _check_language(language)
    keys = canonical_set(patterns)
    if not keys:
        return _normal_text("cause", language)
    per = 3 if len(keys) == 1 else 2
    parts = [_names_intro(keys, language)] if intro else []
    parts += [pattern_cause(k, language, per, variant, detail=len(keys) <= 2) for k in keys]
    if len(keys) > 1:
        parts.append(_separation(keys, language))
    return ("\n" if len(keys) > 1 else " " if language == "en" else "").join(parts)


def check_answer(patterns: Iterable[str], language: str = "en", variant: int = 0, intro: bool = True) -> str:
    """What to check and do for every pattern present."""
    _check_language(language)
    keys = canonical_set(patterns)
    if not keys:
        return _normal_text("check", language)
    per = {1: 3, 2: 2}.get(len(keys), 1)
    parts = [_names_intro(keys, language)] if intro else []
    parts += [pattern_check(k, language, per, variant, detail=len(keys) <= 2) for k in keys]
    if len(keys) > 1:
        parts.append(_separation(keys, language))
    return ("\n" if len(keys) > 1 else " " if language == "en" else "").join(parts)


# ---------------------------------------------------------------- what a pattern's name means


def definition_answer(key: str, language: str = "en", shown: bool | None = None, place: str | None = None) -> str:
    """What the name of pattern `key` means: what it looks like on a map, its usual causes, and, when
    `shown` is known (a thread whose map was recognised), whether this wafer shows it, followed by `place`
    (`location_sentence`, where it sits on this wafer) when it does."""
    _check_language(language)
    appearance = KNOWLEDGE[key].appearance.get(language)
    causes = pattern_cause(key, language, variant=1, detail=False)
    where = f" {place}" if shown and place else ""
    if language == "en":
        text = f"{name(key, 'en')} is a wafer-map pattern: {appearance}. {causes}"
        if shown is not None:
            text += f" This wafer {'shows' if shown else 'does not show'} it.{where}"
        return text
    text = f"{name(key, 'zh')}（{name(key, 'en')}）是一种晶圆图缺陷图案：{appearance}。{causes}"
    if shown is not None:
        text += f"这片晶圆{'有' if shown else '没有'}{name(key, 'zh')}缺陷。{where.strip()}"
    return text


# ---------------------------------------------------------------- yes / no


def normal_answer(patterns: Iterable[str], language: str = "en", cautions: Sequence[str] = ()) -> str:
    """The answer to "is this wafer ok/normal?": yes only when no pattern is present, else no and the patterns.

    With `cautions` (what to double-check, e.g. `unrecognised_cluster_note`), a wafer without a
    recognised pattern is not called normal: the answer says so and gives them instead."""
    _check_language(language)
    keys = canonical_set(patterns)
    if not keys and cautions:
        return (f"I can't call it normal. {' '.join(cautions)}" if language == "en"
                else f"无法确认它正常。{''.join(cautions)}")
    if not keys:
        return ("Yes, this wafer looks normal: no defect pattern is present." if language == "en"
                else "是的，这片晶圆正常，没有缺陷模式。")
    return (f"No, this wafer is not normal. {recognition_answer(keys, 'en')}" if language == "en"
            else f"不正常。{recognition_answer(keys, 'zh')}")


def yesno_answer(
    key: str,
    patterns: Iterable[str],
    language: str = "en",
    location: PatternLocation | None = None,
    facts: dict | None = None,
) -> str:
    """``Yes, …`` when `key` is among `patterns`, else ``No, …`` and what the wafer shows instead."""
    _check_language(language)
    keys = canonical_set(patterns)
    (asked,) = canonical_set([key])
    n = name(asked, language)
    if asked in keys:
        where = ""
        if location is not None and facts is not None:
            where = (" " if language == "en" else "") + location_sentence(location, facts, language)
        others = [k for k in keys if k != asked]
        also = ""
        if others:
            also = (f" It also shows {join_names(others, 'en')}." if language == "en"
                    else f"此外还有：{join_names(others, 'zh')}。")
        article = "an" if n[:1] in "AEIOU" else "a"  # an Edge-Loc, an Edge-Ring
        return (f"Yes, there is {article} {n} pattern.{where}{also}" if language == "en"
                else f"是的，存在{n}缺陷。{where}{also}")
    if not keys:
        return (f"No, there is no {n} pattern: this wafer is normal." if language == "en"
                else f"没有，不存在{n}缺陷：这片晶圆正常。")
    return (f"No, there is no {n} pattern. The wafer shows {join_names(keys, 'en')}." if language == "en"
            else f"没有，不存在{n}缺陷。这片晶圆的缺陷模式是：{join_names(keys, 'zh')}。")
