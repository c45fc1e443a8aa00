// BERT uncased WordPiece tokenization (what all-MiniLM-L6-v2's BertTokenizer does), in the page.
// Basic step: drop control characters, map whitespace to spaces, pad CJK ideographs, lowercase,
// strip accents (NFD minus combining marks), split on whitespace and punctuation. WordPiece:
// greedy longest match against the vocabulary, continuations prefixed "##"; a word with no
// match (or over 100 characters) becomes [UNK].

const CONTROL = /[\p{Cc}\p{Cf}\p{Co}\p{Cs}]/u;
const WHITESPACE = /[\s\p{Zs}]/u;
const MARK = /\p{Mn}/gu;
const ASCII_PUNCTUATION = /[!-\/:-@\[-`{-~]/;
const PUNCTUATION = /\p{P}/u;
const CJK = /[\u{4E00}-\u{9FFF}\u{3400}-\u{4DBF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2B73F}\u{2B740}-\u{2B81F}\u{2B820}-\u{2CEAF}\u{F900}-\u{FAFF}\u{2F800}-\u{2FA1F}]/u;
const MAX_WORD = 100;

export class WordPiece {
  constructor(vocabText) {
    this.ids = new Map(vocabText.split("\n").map((token, id) => [token.replace(/\r$/, ""), id]));
    for (const special of ["[CLS]", "[SEP]", "[UNK]"]) {
      if (!this.ids.has(special)) throw new Error(`vocabulary has no ${special}`);
    }
  }

  basic(text) {
    let cleaned = "";
    for (const ch of text) {
      if (ch === "\u0000" || ch === "\uFFFD") continue;
      if (WHITESPACE.test(ch)) cleaned += " ";
      else if (CONTROL.test(ch)) continue;
      else if (CJK.test(ch)) cleaned += ` ${ch} `;
      else cleaned += ch;
    }
    const words = [];
    for (const raw of cleaned.split(" ")) {
      if (!raw) continue;
      const word = raw.toLowerCase().normalize("NFD").replace(MARK, "");
      let current = "";
      for (const ch of word) {
        if (ASCII_PUNCTUATION.test(ch) || PUNCTUATION.test(ch)) {
          if (current) words.push(current);
          words.push(ch);
          current = "";
        } else current += ch;
      }
      if (current) words.push(current);
    }
    return words;
  }

  wordpiece(word) {
    const chars = Array.from(word);
    if (chars.length > MAX_WORD) return ["[UNK]"];
    const pieces = [];
    for (let start = 0; start < chars.length; ) {
      let end = chars.length;
      let piece = null;
      while (start < end) {
        const candidate = (start > 0 ? "##" : "") + chars.slice(start, end).join("");
        if (this.ids.has(candidate)) { piece = candidate; break; }
        end -= 1;
      }
      if (piece === null) return ["[UNK]"];
      pieces.push(piece);
      start = end;
    }
    return pieces;
  }

  // Token ids [CLS] … [SEP], truncated to maxLength tokens.
  encode(text, maxLength) {
    const tokens = this.basic(text).flatMap((word) => this.wordpiece(word)).slice(0, maxLength - 2);
    return ["[CLS]", ...tokens, "[SEP]"].map((token) => this.ids.get(token));
  }
}
