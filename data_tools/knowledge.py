"""Process knowledge per wafer-map defect pattern, in English and Chinese, as composable data.

For each base pattern (and for a normal map) this module records what the pattern looks
like, the process causes a fab engineer would suspect — each with the reasoning that links
the cause to the spatial signature — what to check first, what to do, and the signature
that separates the pattern's dies from other patterns in a mixture. Answers (training
corpus, bot replies, prompts for hosted models) are composed from these records; nothing
here is free prose that has to be parsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from data_tools.taxonomy import BY_KEY, NORMAL, NORMAL_CHINESE, PATTERN_KEYS, canonical_set

LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Text:
    """One piece of text in English and Chinese."""

    en: str
    zh: str

    def get(self, language: str) -> str:
        if language == "en":
            return self.en
        if language == "zh":
            return self.zh
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")


@dataclass(frozen=True)
class Cause:
    """A likely process cause of a pattern and why it produces that spatial signature."""

    name: Text  # short noun phrase, e.g. "CMP centre-fast polishing"
    reasoning: Text  # one sentence: mechanism → where on the wafer it shows
    area: str  # process area: deposition, etch, cmp, litho, thermal, handling, contamination, test


@dataclass(frozen=True)
class PatternKnowledge:
    """Everything known about one pattern (or about a normal map)."""

    key: str  # taxonomy key, or "Normal"
    appearance: Text  # what it looks like on the map
    causes: tuple[Cause, ...]  # most likely first
    checks: tuple[Text, ...]  # what to check, most useful first
    actions: tuple[Text, ...]  # containment and corrective actions
    signature: Text  # how its dies are told apart from other patterns in a mixture


PROCESS_AREAS = ("deposition", "etch", "cmp", "litho", "thermal", "handling", "contamination", "test")


def _t(en: str, zh: str) -> Text:
    return Text(en, zh)


def _c(area: str, name_en: str, name_zh: str, why_en: str, why_zh: str) -> Cause:
    if area not in PROCESS_AREAS:
        raise ValueError(f"unknown process area {area!r}; expected one of {PROCESS_AREAS}")
    return Cause(Text(name_en, name_zh), Text(why_en, why_zh), area)


KNOWLEDGE: dict[str, PatternKnowledge] = {
    "Center": PatternKnowledge(
        key="Center",
        appearance=_t(
            "a round cluster of failing dies at the wafer centre, with the edge largely good",
            "晶圆中心出现一团圆形的失效芯片，边缘基本良好",
        ),
        causes=(
            _c(
                "deposition",
                "centre-to-edge deposition or etch non-uniformity",
                "沉积或刻蚀的中心-边缘不均匀",
                "showerhead gas distribution or plasma density that peaks (or dips) at the centre makes film "
                "thickness or etch depth at the centre drift out of the window first",
                "喷淋头气体分布或等离子体密度在中心偏高（或偏低），使中心区域的膜厚或刻蚀深度最先超出工艺窗口",
            ),
            _c(
                "cmp",
                "CMP centre-fast polishing",
                "CMP 中心研磨过快",
                "too much carrier-head pressure in the centre zone or a worn pad/conditioning profile removes more "
                "material at the centre, causing dishing, erosion or thin films there",
                "研磨头中心区压力过大或研磨垫/修整轮廓磨损，使中心去除量偏大，造成中心凹陷、侵蚀或膜层过薄",
            ),
            _c(
                "litho",
                "spin-coat or develop problems at the centre",
                "中心涂胶或显影异常",
                "resist dispense, puddle develop and rinse all start at the wafer centre, so a dispense-nozzle, "
                "puddle or rinse fault shifts resist thickness or CD in the centre first",
                "光刻胶滴胶、显影液铺展和冲洗都从晶圆中心开始，喷嘴、显影或冲洗异常会先使中心的胶厚或线宽偏移",
            ),
            _c(
                "handling",
                "chuck or lift-pin contact at the centre",
                "卡盘或顶针在中心接触",
                "a particle on the chuck centre or lift-pin marks locally change wafer flatness or heat transfer, "
                "which defocuses exposure or shifts temperature under the centre",
                "卡盘中心的颗粒或顶针痕迹会改变局部平整度或导热，导致中心曝光离焦或温度偏移",
            ),
        ),
        checks=(
            _t(
                "centre-to-edge maps of film thickness, CD and sheet resistance for the affected lots",
                "受影响批次的膜厚、线宽和方块电阻中心-边缘分布图",
            ),
            _t(
                "CMP removal-rate profile and carrier-head zone pressures",
                "CMP 去除速率分布及研磨头各区压力",
            ),
            _t(
                "coater/developer dispense and rinse logs and the resist thickness map",
                "涂胶/显影机的滴胶与冲洗记录以及胶厚分布图",
            ),
            _t(
                "chuck and lift pins for particles or wear; backside inspection of a failing wafer",
                "卡盘和顶针是否有颗粒或磨损；对失效晶圆做背面检查",
            ),
            _t(
                "tool commonality: which chamber or head processed every affected wafer",
                "设备共性分析：所有受影响晶圆共同经过的腔体或研磨头",
            ),
        ),
        actions=(
            _t(
                "hold the common chamber or head and run monitor wafers to confirm the radial profile",
                "暂停共性腔体或研磨头，跑监控片确认径向分布",
            ),
            _t(
                "re-tune centre/edge gas split, zone pressure or dispense recipe, then re-qualify",
                "重新调整中心/边缘气体配比、分区压力或滴胶程序后重新验证",
            ),
        ),
        signature=_t(
            "its failures sit inside about 40% of the radius and the fail rate falls steadily with radius",
            "失效集中在约 40% 半径以内，失效率随半径增大而持续下降",
        ),
    ),
    "Donut": PatternKnowledge(
        key="Donut",
        appearance=_t(
            "a ring of failing dies part-way between centre and edge, with a good centre",
            "中心与边缘之间出现一圈失效芯片，中心良好",
        ),
        causes=(
            _c(
                "thermal",
                "a temperature ring in the process chamber",
                "工艺腔体中的环形温度不均",
                "multi-zone heaters or electrostatic-chuck zones that are mis-balanced heat one radius hotter or "
                "colder, so deposition or etch rates shift along a ring",
                "多区加热器或静电卡盘分区失衡，使某一半径处偏热或偏冷，沉积或刻蚀速率沿一圈发生偏移",
            ),
            _c(
                "etch",
                "a gas-flow ring from the showerhead or pumping",
                "喷淋头或抽气造成的环形气流不均",
                "a partly blocked showerhead zone or asymmetric pumping changes the gas supply at one radius",
                "喷淋头某一分区部分堵塞或抽气不对称，使某一半径处的气体供应发生变化",
            ),
            _c(
                "thermal",
                "RTA lamp-zone imbalance",
                "快速热退火（RTA）灯区失衡",
                "RTA lamps are arranged in concentric zones; one weak or strong zone shifts dopant activation and "
                "sheet resistance along a ring",
                "RTA 灯管按同心分区排布，某一区功率偏弱或偏强会使一圈区域的掺杂激活和方块电阻偏移",
            ),
            _c(
                "litho",
                "photoresist spin or bake ring",
                "光刻胶旋涂或烘烤造成的环形不均",
                "spin speed/acceleration, exhaust, or a hot-plate ring can make resist thickness or CD form a ring",
                "旋涂转速/加速度、排风或热板的环形温差会使胶厚或线宽呈环状分布",
            ),
        ),
        checks=(
            _t(
                "radial thickness, CD and sheet-resistance profiles at the ring's radius",
                "在环所在半径处的膜厚、线宽和方块电阻径向分布",
            ),
            _t(
                "heater, chuck-zone and RTA lamp-zone power and temperature logs",
                "加热器、卡盘分区及 RTA 灯区的功率与温度记录",
            ),
            _t(
                "showerhead condition and chamber pumping/flow logs",
                "喷淋头状态及腔体抽气/流量记录",
            ),
            _t(
                "coater spin recipe (speed, acceleration, exhaust) and bake-plate uniformity",
                "涂胶程序（转速、加速度、排风）及热板均匀性",
            ),
        ),
        actions=(
            _t(
                "measure the radius of the ring and match it to heater, lamp or showerhead zone boundaries",
                "测量环的半径，并与加热器、灯区或喷淋头分区边界对应",
            ),
            _t(
                "re-balance the suspected zone and confirm on monitor wafers before releasing the tool",
                "重新平衡可疑分区，用监控片确认后再放行设备",
            ),
        ),
        signature=_t(
            "its failures form a closed or partial ring at 40–80% of the radius while the centre stays good",
            "失效在 40%–80% 半径处形成完整或不完整的圆环，而中心保持良好",
        ),
    ),
    "Edge_Loc": PatternKnowledge(
        key="Edge_Loc",
        appearance=_t(
            "a cluster of failing dies on one stretch of the wafer edge",
            "晶圆边缘某一段出现成团的失效芯片",
        ),
        causes=(
            _c(
                "handling",
                "handling or clamp contact at one point of the edge",
                "边缘某一点的搬运或夹持接触",
                "a robot end-effector, clamp finger or aligner that touches the same spot of the edge damages or "
                "contaminates the dies there",
                "机械手、夹爪或对准器总在边缘同一位置接触晶圆，损伤或污染该处芯片",
            ),
            _c(
                "litho",
                "edge-bead removal (EBR) misalignment",
                "去边（EBR）偏心",
                "if the wafer is off-centre on the spin chuck, the EBR cut is wider on one side and removes resist "
                "from usable dies there",
                "晶圆在旋涂卡盘上偏心时，一侧的去边宽度变大，把有效芯片上的光刻胶也去掉了",
            ),
            _c(
                "handling",
                "off-centre placement or notch-related asymmetry",
                "放片偏心或与缺口方向相关的不对称",
                "a wafer placed off-centre in the chamber sits closer to the focus/edge ring on one side; a "
                "sector that is fixed relative to the notch points to a tool feature such as a pin or gas inlet",
                "晶圆在腔体中放偏时一侧更靠近聚焦环/边缘环；若失效扇区相对缺口固定，说明与顶针或进气口等设备结构有关",
            ),
            _c(
                "handling",
                "local edge chipping, cracks or peeling",
                "局部边缘崩边、裂纹或剥落",
                "a chip or bevel defect at one spot spreads cracks or film peeling into the nearby dies",
                "某处崩边或倒角缺陷会使裂纹或膜层剥落扩展到附近芯片",
            ),
        ),
        checks=(
            _t(
                "the angle of the failing sector relative to the notch, and whether it repeats across wafers",
                "失效扇区相对缺口的角度，以及是否在多片晶圆上重复出现",
            ),
            _t(
                "wafer centring and placement calibration of the handler and process chambers",
                "搬运机和工艺腔体的晶圆定心与放片校准",
            ),
            _t(
                "EBR concentricity measured on a test wafer",
                "在测试片上测量去边的同心度",
            ),
            _t(
                "edge and bevel inspection of a failing wafer for chips, cracks or peeling",
                "对失效晶圆的边缘和倒角检查崩边、裂纹或剥落",
            ),
            _t(
                "end-effector, clamp fingers and cassette slots for wear or residue",
                "机械手末端、夹爪和片盒槽位是否磨损或有残留",
            ),
        ),
        actions=(
            _t(
                "if the sector repeats, trace the common handler or chamber and recalibrate centring",
                "若扇区重复出现，追查共性搬运机或腔体并重新校准定心",
            ),
            _t(
                "replace worn contact parts and re-centre the EBR",
                "更换磨损的接触部件并重新校正去边同心度",
            ),
        ),
        signature=_t(
            "its failures touch the edge and are confined to one or two neighbouring sectors",
            "失效贴着边缘，并局限在一到两个相邻扇区内",
        ),
    ),
    "Edge_Ring": PatternKnowledge(
        key="Edge_Ring",
        appearance=_t(
            "failing dies all the way around the wafer edge",
            "晶圆边缘一整圈都是失效芯片",
        ),
        causes=(
            _c(
                "etch",
                "edge non-uniformity in etch or deposition",
                "刻蚀或沉积的边缘不均匀",
                "the plasma sheath bends near a worn focus/edge ring and gas depletion is different at the edge, "
                "so etch rate or film thickness rolls off all around the rim",
                "聚焦环/边缘环磨损使边缘等离子体鞘层弯曲，且边缘气体消耗不同，刻蚀速率或膜厚沿整圈边缘滚降",
            ),
            _c(
                "thermal",
                "temperature roll-off at the edge in RTA or bake",
                "RTA 或烘烤时边缘温度滚降",
                "the rim loses heat faster, so dopant activation, oxidation or bake is weaker all around the edge",
                "边缘散热更快，使整圈边缘的掺杂激活、氧化或烘烤不足",
            ),
            _c(
                "cmp",
                "CMP edge-fast polishing or edge roll-off",
                "CMP 边缘研磨过快或边缘滚降",
                "retaining-ring pressure and pad rebound over-polish the outer few millimetres all around",
                "保持环压力和研磨垫回弹使外圈几毫米整圈被过度研磨",
            ),
            _c(
                "litho",
                "edge-bead removal too wide or clamp-ring shadowing",
                "去边过宽或压环遮挡",
                "a wide EBR or a clamp ring that shadows the rim leaves the outermost dies without resist or film",
                "去边过宽或压环遮挡边缘，使最外圈芯片缺少光刻胶或膜层",
            ),
            _c(
                "deposition",
                "film stress and peeling at the bevel",
                "倒角处膜应力与剥落",
                "stressed films that reach the bevel crack or delaminate and shed particles onto the outer dies",
                "延伸到倒角的高应力膜层开裂或分层，并把颗粒撒落到外圈芯片上",
            ),
        ),
        checks=(
            _t(
                "edge-exclusion and EBR width on a test wafer",
                "在测试片上测量边缘排除区和去边宽度",
            ),
            _t(
                "focus/edge-ring wear (RF hours) in the etch and deposition chambers",
                "刻蚀和沉积腔体的聚焦环/边缘环磨损（射频小时数）",
            ),
            _t(
                "thickness and sheet-resistance profiles in the outer 5 mm",
                "最外 5 mm 内的膜厚和方块电阻分布",
            ),
            _t(
                "bevel inspection for film peeling or cracks",
                "倒角检查是否有膜层剥落或裂纹",
            ),
            _t(
                "whether the failing dies are partial or edge-exclusion dies the test program should skip",
                "失效芯片是否为测试程序本应跳过的不完整芯片或边缘排除芯片",
            ),
        ),
        actions=(
            _t(
                "replace a worn edge ring and re-tune edge gas or temperature",
                "更换磨损的边缘环，并重新调整边缘气体或温度",
            ),
            _t(
                "tighten the EBR width and bevel clean, then re-check the outer-ring yield",
                "收紧去边宽度并加强倒角清洗，再复查外圈良率",
            ),
        ),
        signature=_t(
            "its failures run around most of the circumference within the outer 20% of the radius",
            "失效分布在最外 20% 半径内，并绕过大部分圆周",
        ),
    ),
    "Loc": PatternKnowledge(
        key="Loc",
        appearance=_t(
            "a compact cluster of failing dies inside the wafer, away from the edge",
            "晶圆内部、远离边缘处出现一团紧凑的失效芯片",
        ),
        causes=(
            _c(
                "contamination",
                "local contamination or a particle cluster",
                "局部污染或颗粒团",
                "a flake from a chamber wall or a fall-on particle burst lands in one place and kills the dies "
                "around it",
                "腔壁剥落物或一次颗粒掉落集中落在某处，使周围芯片失效",
            ),
            _c(
                "litho",
                "a local focus hot spot",
                "局部离焦热点",
                "a particle under the wafer on the exposure chuck bends the wafer locally, defocusing the fields "
                "above it",
                "曝光卡盘上晶圆背面下的颗粒使晶圆局部凸起，其上方的曝光场离焦",
            ),
            _c(
                "contamination",
                "wet-process residue or watermarks",
                "湿法残留或水痕",
                "droplets that dry in one place leave residue over a patch of dies",
                "液滴在某处干燥后在一片芯片上留下残留",
            ),
            _c(
                "test",
                "a probe-card problem",
                "探针卡问题",
                "bent or contaminated needles, or poor contact over part of the stepping pattern, fail a block of "
                "neighbouring dies",
                "探针弯曲或污染，或步进过程中局部接触不良，会使一块相邻芯片测试失效",
            ),
        ),
        checks=(
            _t(
                "overlay the inline defect-inspection map on the cluster and SEM-review the defects there",
                "将在线缺陷检测图与失效团叠图，并对该处缺陷做 SEM 复检",
            ),
            _t(
                "the scanner's focus/levelling map for those fields and the exposure chuck for particles",
                "这些曝光场的对焦/调平图，以及曝光卡盘上是否有颗粒",
            ),
            _t(
                "whether the cluster sits at the same place on other wafers (tool-fixed) or moves (random event)",
                "失效团在其他晶圆上是否位于同一位置（设备固定因素）还是位置变化（随机事件）",
            ),
            _t(
                "a re-probe of the cluster with another probe card",
                "用另一张探针卡对该区域重新测试",
            ),
        ),
        actions=(
            _t(
                "clean the exposure chuck or the suspect chamber and add a particle check",
                "清洁曝光卡盘或可疑腔体，并增加颗粒检查",
            ),
            _t(
                "if a re-probe passes, send the probe card for repair and re-bin the dies",
                "若重测通过，送修探针卡并重新分档",
            ),
        ),
        signature=_t(
            "its failures form one compact blob that does not touch the edge and is not centred on the wafer",
            "失效形成一个不接触边缘、也不以晶圆中心为中心的紧凑团块",
        ),
    ),
    "Near_Full": PatternKnowledge(
        key="Near_Full",
        appearance=_t(
            "almost every die on the wafer fails",
            "晶圆上几乎所有芯片都失效",
        ),
        causes=(
            _c(
                "test",
                "wrong test program or probe setup",
                "测试程序或探针设置错误",
                "a wrong program, limits, probe card or a contact problem fails good dies everywhere at once",
                "程序、判定限、探针卡选错或接触不良，会让所有芯片同时测试失效",
            ),
            _c(
                "deposition",
                "a whole-wafer process excursion",
                "整片工艺偏移",
                "a wrong or corrupted recipe, a skipped step or a wrong material affects every die on the wafer",
                "错误或损坏的程序、漏做工序或用错材料会影响晶圆上的每一颗芯片",
            ),
            _c(
                "etch",
                "an equipment failure during processing",
                "加工过程中的设备故障",
                "a plasma, power, gas or temperature fault mid-process leaves the whole wafer under- or "
                "over-processed",
                "加工中途出现等离子体、电源、气体或温度故障，使整片晶圆加工不足或过度",
            ),
            _c(
                "contamination",
                "gross contamination or wafer damage",
                "严重污染或晶圆损伤",
                "heavy contamination, a broken or warped wafer ruins dies across the whole surface",
                "严重污染、晶圆破裂或翘曲会毁掉整个表面的芯片",
            ),
        ),
        checks=(
            _t(
                "retest with a known-good test program and probe card first — it is the cheapest check",
                "先用确认无误的测试程序和探针卡重测——这是成本最低的检查",
            ),
            _t(
                "the lot history: recipe names, skipped or reworked steps",
                "批次履历：程序名称、是否漏做或返工",
            ),
            _t(
                "tool alarms and logs at every step this wafer went through",
                "该晶圆经过的每道工序的设备报警和日志",
            ),
            _t(
                "parametric (PCM/WAT) data and the other wafers of the same lot",
                "参数测试（PCM/WAT）数据以及同批其他晶圆",
            ),
        ),
        actions=(
            _t(
                "put the lot on hold and stop the suspect tool until the excursion is explained",
                "扣留该批次并停用可疑设备，直到偏移原因查明",
            ),
            _t(
                "if the retest passes, correct the test setup and re-bin",
                "若重测通过，修正测试设置并重新分档",
            ),
        ),
        signature=_t(
            "nearly all dies fail in every zone, so no smaller pattern can be read on top of it",
            "各区域几乎全部失效，因此无法在其上分辨其他较小的图案",
        ),
    ),
    "Scratch": PatternKnowledge(
        key="Scratch",
        appearance=_t(
            "a thin line or arc of failing dies",
            "一条由失效芯片组成的细线或弧线",
        ),
        causes=(
            _c(
                "handling",
                "mechanical handling damage",
                "机械搬运损伤",
                "a robot end-effector, tweezers or a wafer sliding on a chuck drags a hard point across the "
                "surface, leaving a mostly straight line",
                "机械手末端、镊子或晶圆在卡盘上滑动时，硬点划过表面，留下大体笔直的划线",
            ),
            _c(
                "cmp",
                "CMP scratching from pad debris or slurry agglomerates",
                "CMP 研磨垫碎屑或浆料团聚造成的划伤",
                "a hard particle trapped under the rotating pad is dragged along the wafer, usually leaving a "
                "curved arc",
                "卡在旋转研磨垫下的硬颗粒沿晶圆拖动，通常留下弧形划痕",
            ),
            _c(
                "cmp",
                "a broken conditioner diamond or worn pad",
                "修整盘金刚石脱落或研磨垫磨损",
                "a loose diamond or glazed pad acts like a cutting tool during polishing",
                "脱落的金刚石或釉化的研磨垫在研磨时像刀具一样划伤晶圆",
            ),
            _c(
                "handling",
                "cassette or FOUP slot contact",
                "片盒或 FOUP 槽位接触",
                "a misaligned slot or a wafer that rubs its neighbour during transport scratches the surface",
                "槽位错位或运输中晶圆与相邻晶圆摩擦会划伤表面",
            ),
        ),
        checks=(
            _t(
                "the scratch shape: a curved arc points to CMP, a straight line to handling",
                "划痕形状：弧形多指向 CMP，直线多指向搬运",
            ),
            _t(
                "CMP pad and conditioner life, slurry filter and large-particle counts",
                "CMP 研磨垫和修整盘寿命、浆料过滤器及大颗粒计数",
            ),
            _t(
                "robot end-effector and chuck calibration, cassette and FOUP slots",
                "机械手末端与卡盘校准、片盒和 FOUP 槽位",
            ),
            _t(
                "optical or SEM review of the scratch and the lot's tool history",
                "对划痕做光学或 SEM 复检，并查看该批次的设备履历",
            ),
        ),
        actions=(
            _t(
                "replace the pad, conditioner or slurry filter if the scratch is an arc",
                "若为弧形划痕，更换研磨垫、修整盘或浆料过滤器",
            ),
            _t(
                "recalibrate or clean the handling path if the scratch is straight",
                "若为直线划痕，重新校准或清洁搬运路径",
            ),
        ),
        signature=_t(
            "its failures form a thin, elongated line that crosses zones instead of a round blob",
            "失效形成一条细长、跨越不同区域的线，而不是圆形团块",
        ),
    ),
    "Random": PatternKnowledge(
        key="Random",
        appearance=_t(
            "failing dies scattered over the whole wafer with no structure",
            "失效芯片散布在整片晶圆上，没有明显结构",
        ),
        causes=(
            _c(
                "contamination",
                "particles or contamination spread over the wafer",
                "散布在晶圆上的颗粒或污染",
                "particles from a chamber, chemicals or DI water land at random positions, so failures have no "
                "preferred zone",
                "来自腔体、化学品或去离子水的颗粒随机落在晶圆上，所以失效没有偏好区域",
            ),
            _c(
                "contamination",
                "cleanroom or carrier environment",
                "洁净室或载具环境",
                "airborne particles or dirty FOUPs add defects uniformly across the surface",
                "空气中的颗粒或脏污的 FOUP 会在整个表面均匀地增加缺陷",
            ),
            _c(
                "deposition",
                "random defectivity at a marginal process window",
                "工艺窗口临界导致的随机缺陷",
                "when a step runs close to its limit, random opens or shorts fail dies anywhere on the wafer",
                "工序接近其极限时，随机的开路或短路会让晶圆上任意位置的芯片失效",
            ),
        ),
        checks=(
            _t(
                "inline defect density per layer against the baseline, to find the layer that adds defects",
                "各层在线缺陷密度与基线对比，找出增加缺陷的工序层",
            ),
            _t(
                "particle monitors of the tools in the lot's route",
                "该批次路线中各设备的颗粒监控数据",
            ),
            _t(
                "chemical, DI water and cleanroom particle counts; FOUP cleaning records",
                "化学品、去离子水及洁净室颗粒计数；FOUP 清洗记录",
            ),
            _t(
                "whether yield matches the defect-density (Poisson) model for this die size",
                "良率是否符合该芯片尺寸下的缺陷密度（泊松）模型",
            ),
        ),
        actions=(
            _t(
                "clean or requalify the tool whose particle adders are high",
                "清洁或重新验证颗粒增加量偏高的设备",
            ),
            _t(
                "tighten particle monitoring until defect density is back at baseline",
                "加强颗粒监控，直到缺陷密度回到基线",
            ),
        ),
        signature=_t(
            "its failures are spread evenly over every zone and sector without clusters",
            "失效均匀分布于各个区域和扇区，没有成团",
        ),
    ),
    NORMAL: PatternKnowledge(
        key=NORMAL,
        appearance=_t(
            "no systematic pattern: the few failing dies are isolated and spread out",
            "没有系统性图案：少量失效芯片零散分布",
        ),
        causes=(
            _c(
                "contamination",
                "baseline random defectivity",
                "基线随机缺陷",
                "every process has a background defect density that fails a few isolated dies",
                "任何工艺都有背景缺陷密度，会使少数零散芯片失效",
            ),
        ),
        checks=(
            _t(
                "that the yield is in line with the product's baseline",
                "良率是否与该产品的基线一致",
            ),
            _t(
                "the same wafer position on the next lots, in case a weak pattern starts to build up",
                "后续批次同一位置，以防弱图案逐渐形成",
            ),
        ),
        actions=(
            _t(
                "no action beyond routine monitoring",
                "除常规监控外无需处理",
            ),
        ),
        signature=_t(
            "failures show no zone, sector or cluster preference",
            "失效没有区域、扇区或成团偏好",
        ),
    ),
}

#: How to separate the contributors of a mixture, whatever the patterns.
SEPARATION_STEPS: tuple[Text, ...] = (
    _t(
        "split the failing dies by where they sit (centre, ring, edge sector, local blob, line) and treat each "
        "group as its own signal",
        "按失效位置（中心、圆环、边缘扇区、局部团块、线条）把失效芯片分组，每组作为独立信号处理",
    ),
    _t(
        "run tool commonality for each group separately: different groups usually come from different steps",
        "对每组分别做设备共性分析：不同组通常来自不同工序",
    ),
    _t(
        "check which groups repeat on other wafers of the lot: a repeating group is tool-fixed, a moving one is "
        "an event",
        "检查哪些组在同批其他晶圆上重复出现：重复的组与设备固定因素有关，位置变化的组是偶发事件",
    ),
)

#: Notes for particular pairs, keyed by the sorted pair of pattern keys.
PAIR_NOTES: dict[tuple[str, str], Text] = {
    ("Center", "Edge_Ring"): _t(
        "Center and Edge-Ring together often mean one radial non-uniformity that is off at both ends (for example "
        "CMP or deposition tuned too far) — compare the radial fail-rate profile before looking for two causes",
        "中心与边缘环同时出现，常常是同一种径向不均匀在两端都超标（例如 CMP 或沉积调得过头）——先比较径向失效率分布，"
        "再考虑是否有两个原因",
    ),
    ("Donut", "Edge_Ring"): _t(
        "Donut and Edge-Ring are both rings: two zones of a multi-zone heater, lamp array or showerhead may be "
        "off at once",
        "环形与边缘环都是圆环：可能是多区加热器、灯阵或喷淋头的两个分区同时偏离",
    ),
    ("Loc", "Scratch"): _t(
        "when the scratch runs into the local cluster, one event (a particle dragged across the wafer) can "
        "explain both",
        "若划痕延伸到局部失效团，可能是同一事件（颗粒被拖过晶圆）造成两者",
    ),
    ("Edge_Loc", "Scratch"): _t(
        "a scratch that starts at the failing edge sector points to a handling contact at that point of the edge",
        "若划痕起始于失效的边缘扇区，说明边缘该处存在搬运接触",
    ),
    ("Center", "Scratch"): _t(
        "a scratch through the centre cluster may be CMP-related: check the polisher first for both",
        "若划痕穿过中心失效团，可能与 CMP 有关：先检查研磨机",
    ),
    ("Edge_Loc", "Loc"): _t(
        "a local cluster next to the failing edge sector may be the same contamination spreading inwards",
        "紧邻失效边缘扇区的局部失效团，可能是同一污染向内扩散",
    ),
}


def knowledge(name: str) -> PatternKnowledge:
    """The knowledge record of a pattern (any accepted spelling) or of ``Normal``."""
    if name.strip().lower() in {"normal", "none", "正常"}:
        return KNOWLEDGE[NORMAL]
    return KNOWLEDGE[canonical_set([name])[0]]


def display_name(key: str, language: str) -> str:
    """Display name of a pattern key or ``Normal`` in English or Chinese."""
    if key == NORMAL:
        return Text(NORMAL, NORMAL_CHINESE).get(language)
    return Text(BY_KEY[key].english, BY_KEY[key].chinese).get(language)


def pair_notes(keys: Iterable[str]) -> list[Text]:
    """Notes for every known pair among `keys`, in column order."""
    present = canonical_set(keys)
    notes = []
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            note = PAIR_NOTES.get((a, b)) or PAIR_NOTES.get((b, a))
            if note is not None:
                notes.append(note)
    return notes


def reference_text(keys: Iterable[str], language: str = "en", max_causes: int = 4) -> str:
    """A compact reference block for the given patterns (all of it, for prompts of hosted models)."""
    present = canonical_set(keys)
    colon = ": " if language == "en" else "："
    lines = []
    for key in present or (NORMAL,):
        record = KNOWLEDGE[key]
        name = display_name(key, language)
        lines.append(f"{name}{colon}{record.appearance.get(language)}")
        for cause in record.causes[:max_causes]:
            lines.append(f"  - {cause.name.get(language)}{colon}{cause.reasoning.get(language)}")
        for check in record.checks:
            lines.append(f"  * {check.get(language)}")
    if len(present) > 1:
        lines.extend(f"» {step.get(language)}" for step in SEPARATION_STEPS)
        lines.extend(f"» {note.get(language)}" for note in pair_notes(present))
    return "\n".join(lines)


assert set(KNOWLEDGE) == {*PATTERN_KEYS, NORMAL}, sorted(KNOWLEDGE)
