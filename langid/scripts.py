"""Scripts of texts: decide among a few candidates for labels that do not say (Serbian, Chinese...),
and check that a label's script occurs in its text, and how much of it."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from langid.distinct import groups

# ISO 15924 code -> Unicode script property name; `regex` knows the Unicode tables, so we need no
# character ranges. Patterns are compiled on first use.
_UNICODE_SCRIPT = {
    "Latn": "Latin",
    "Cyrl": "Cyrillic",
    "Arab": "Arabic",
    "Deva": "Devanagari",
    "Guru": "Gurmukhi",
    "Mong": "Mongolian",
    "Grek": "Greek",
    "Hebr": "Hebrew",
    "Beng": "Bengali",
    "Thaa": "Thaana",
    "Geor": "Georgian",
    "Armn": "Armenian",
    "Ethi": "Ethiopic",
    "Tfng": "Tifinagh",
    "Olck": "Ol_Chiki",
    "Nkoo": "Nko",
    "Tibt": "Tibetan",
    "Mymr": "Myanmar",
    "Thai": "Thai",
    "Laoo": "Lao",
    "Khmr": "Khmer",
    "Hang": "Hangul",
    "Gujr": "Gujarati",
    "Orya": "Oriya",
    "Taml": "Tamil",
    "Telu": "Telugu",
    "Knda": "Kannada",
    "Mlym": "Malayalam",
    "Sinh": "Sinhala",
}


# Scripts written with several Unicode scripts, as RE2 classes for Arrow's vectorised regexes.
_RE2_CLASS = {
    "Hans": r"\p{Han}",
    "Hant": r"\p{Han}",
    "Jpan": r"[\p{Han}\p{Hiragana}\p{Katakana}]",
    "Kore": r"[\p{Hangul}\p{Han}]",
}


# Japanese written with this many Han characters and no kana is not Japanese: on SIB-200 dev, every
# Japanese sentence has kana, and 1 of 12 fragments with 6+ Han characters has none, while short200
# calls Chinese questions Japanese (XQuAD-R dev: 31 of 1,190, most of them long and kana-free).
KANA_FREE_HAN = 6


def mostly_han(texts: pa.Array) -> np.ndarray:
    """Per text, whether it is Chinese by its script: at least `KANA_FREE_HAN` Han characters, no
    kana, and no more letters of other scripts than Han characters (a Chinese question naming
    `IPCC` or `Merit` is still Chinese; a Han character is a morpheme, worth several letters).
    Texts without Han are ruled out in one pass; only the others are counted."""
    out = pc.fill_null(pc.match_substring_regex(texts, r"\p{Han}"), False).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(out)
    if len(rows):
        some = texts.take(pa.array(rows, pa.int64()))
        han = pc.count_substring_regex(some, r"\p{Han}")
        enough = pc.and_(
            pc.greater_equal(han, KANA_FREE_HAN),
            pc.greater_equal(pc.multiply(han, 2), pc.count_substring_regex(some, r"\pL")),
        )
        ok = pc.and_(enough, pc.invert(pc.match_substring_regex(some, r"[\p{Hiragana}\p{Katakana}]")))
        out[rows] = pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
    return out


def script_present(texts: pa.Array, scripts: pa.Array) -> np.ndarray:
    """Per text, whether it contains any character of the script paired with it (`Latn`, `Hans`...),
    and for `Jpan` some kana unless it has fewer than `KANA_FREE_HAN` Han characters; True for
    scripts this module has no table for. One vectorised pass per distinct script."""
    ok = np.ones(len(scripts), dtype=bool)
    for script, idx in groups(scripts):
        cls = _RE2_CLASS.get(script) or (rf"\p{{{_UNICODE_SCRIPT[script]}}}" if script in _UNICODE_SCRIPT else None)
        if cls is None:
            continue
        some = texts.take(pa.array(idx, pa.int64()))
        found = pc.match_substring_regex(some, cls)
        if script == "Jpan":
            kana = pc.match_substring_regex(some, r"[\p{Hiragana}\p{Katakana}]")
            found = pc.and_(found, pc.or_(kana, pc.less(pc.count_substring_regex(some, r"\p{Han}"), KANA_FREE_HAN)))
        ok[idx] = pc.fill_null(found, False).to_numpy(zero_copy_only=False)
    return ok


def script_share(texts: pa.Array, scripts: pa.Array) -> np.ndarray:
    """Per text, the share of its letters that are of the script paired with it (at most 1; marks of
    the script count with its letters, a Han character as two); 1.0 for scripts this module has no
    table for and for texts without letters. One vectorised pass per distinct script."""
    share = np.ones(len(scripts), dtype=float)
    for script, idx in groups(scripts):
        cls = _RE2_CLASS.get(script) or (rf"\p{{{_UNICODE_SCRIPT[script]}}}" if script in _UNICODE_SCRIPT else None)
        if cls is None:
            continue
        some = texts.take(pa.array(idx, pa.int64()))
        han = _count(some, r"\p{Han}")  # a Han character is a morpheme: it weighs as two letters
        letters = _count(some, r"\pL") + han
        mine = _count(some, cls) + (han if "Han" in cls else 0)
        share[idx] = np.where(letters > 0, np.minimum(mine / np.maximum(letters, 1), 1.0), 1.0)
    return share


def _count(texts: pa.Array, pattern: str) -> np.ndarray:
    return pc.fill_null(pc.count_substring_regex(texts, pattern), 0).to_numpy(zero_copy_only=False)


@lru_cache(maxsize=None)
def _pattern(script: str) -> regex.Pattern | None:
    name = _UNICODE_SCRIPT.get(script)
    return regex.compile(rf"\p{{Script={name}}}+") if name else None


# Frequent characters whose simplified and traditional forms differ. Unicode gives both forms the
# script "Han", so the variant is told apart by which of these the text uses.
# Pairs whose simplified form is not also a traditional character (so 于/於, 后/後, 云/雲 are left out).
_PAIRS = (
    "们們 这這 国國 说說 时時 会會 来來 为為 个個 对對 学學 发發 过過 还還 没沒 进進 经經 动動 问問 见見"
    "长長 门門 马馬 车車 东東 两兩 开開 关關 书書 电電 话話 钱錢 买買 卖賣 让讓 认認 识識 语語 读讀 写寫"
    "汉漢 产產 业業 实實 现現 种種 应應 该該 头頭 岁歲 给給 听聽 觉覺 儿兒 与與 专專 丝絲 严嚴 临臨 丽麗"
    "举舉 义義 乐樂 习習 乡鄉 乱亂 争爭 亚亞 亲親 亿億 仅僅 从從 价價 众眾 优優 伟偉 传傳 伤傷 体體 侧側"
    "债債 储儲 党黨 兰蘭 兴興 养養 内內 册冊 军軍 农農 决決 况況 凤鳳 击擊 刘劉 则則 刚剛 创創 别別 剧劇"
    "办辦 务務 势勢 区區 医醫 华華 协協 单單 卫衛 厂廠 历歷 压壓 厅廳 县縣 参參 双雙 变變 号號 叶葉 员員"
    "响響 围圍 园園 图圖 圆圓 场場 坏壞 块塊 坚堅 报報 处處 备備 夺奪 妇婦 妈媽 孙孫 宁寧 宝寶 审審 宪憲"
    "宫宮 寻尋 导導 将將 尔爾 层層 属屬 岛島 币幣 师師 带帶 帮幫 广廣 庆慶 库庫 异異 张張 弹彈 归歸 当當"
    "录錄 忆憶 态態 总總 恶惡 惊驚 战戰 执執 扩擴 扫掃 护護 担擔 拥擁 择擇 挂掛 损損 换換 据據 数數 断斷"
    "无無 旧舊 显顯 术術 机機 杀殺 杂雜 权權 条條 杨楊 极極 构構 标標 样樣 树樹 桥橋 检檢 欢歡 气氣 汇匯"
    "汤湯 济濟 满滿 灭滅 灯燈 灵靈 点點 热熱 爱愛 独獨 环環 画畫 疗療 盐鹽 监監 盖蓋 确確 礼禮 离離 积積"
    "称稱 稳穩 笔筆 类類 红紅 级級 约約 纪紀 纸紙 线線 组組 细細 织織 终終 结結 统統 继繼 续續 维維 绿綠"
    "网網 罗羅 职職 联聯 声聲 胜勝 脑腦 节節 苏蘇 获獲 虽雖 观觀 规規 视視 计計 讨討 训訓 议議 记記 讲講"
    "论論 设設 访訪 证證 评評 诉訴 词詞 试試 诗詩 详詳 误誤 请請 调調 谁誰 谈談 谢謝 负負 财財 责責 败敗"
    "货貨 质質 购購 费費 资資 赛賽 转轉 轮輪 软軟 输輸 边邊 达達 运運 远遠 连連 选選 邮郵 释釋 钟鐘 铁鐵"
    "银銀 错錯 间間 闻聞 队隊 阳陽 阶階 际際 陆陸 险險 随隨 难難 须須 项項 顺順 预預 领領 题題 颜顏 风風"
    "飞飛 饭飯 验驗 鱼魚 鸟鳥 黄黃 齐齊 龙龍"
).split()
_SIMPLIFIED = {p[0] for p in _PAIRS}
_TRADITIONAL = {p[1] for p in _PAIRS}


def han_variant(text: str, default: str) -> str:
    """`Hans` or `Hant` by counting variant-specific characters; `default` when neither is seen."""
    simplified = sum(ch in _SIMPLIFIED for ch in text)
    traditional = sum(ch in _TRADITIONAL for ch in text)
    if simplified == traditional:
        return default
    return "Hans" if simplified > traditional else "Hant"


_HAN = regex.compile(r"\p{Script=Han}")
SAMPLE_CHARS = 600  # the script is decided on a text's first characters: enough, and bounded


def dominant_script(text: str, candidates: tuple[str, ...]) -> str | None:
    """The candidate script with the most characters in `text` (the first on a tie); None when the
    text has none of them (the model's language cannot be right: a Mongolian-script text that
    lid.176 calls Chinese)."""
    text = text[:SAMPLE_CHARS]
    if set(candidates) <= {"Hans", "Hant"}:
        return han_variant(text, candidates[0]) if _HAN.search(text) else None
    best, best_count = None, 0
    for script in candidates:
        pattern = _pattern(script)
        count = sum(map(len, pattern.findall(text))) if pattern else 0
        if count > best_count:
            best, best_count = script, count
    return best
