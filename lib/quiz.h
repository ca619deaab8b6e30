// quiz.h: the judge's side of the method (method.md §1, §3): prompts, the
// quiz reply parser, seeded shuffling, quiz answers, word and OOD counts.
// Pure functions, no I/O: unit-tested on real-shaped judge replies.
#ifndef PQ_QUIZ_H
#define PQ_QUIZ_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "util.h"

#define PQ_QUIZ_QUESTIONS 5
#define PQ_QUIZ_CHOICES 5

typedef struct PqQuestion {
    char *question;
    char *choices[PQ_QUIZ_CHOICES]; // A..E
    char answer;                    // 'A'..'E'
} PqQuestion;

typedef struct PqQuiz {
    PqQuestion q[PQ_QUIZ_QUESTIONS];
    int n;
} PqQuiz;

// Built-in prompts. Placeholders: {article}; {summary} and {questions}.
extern const char *const pq_prompt_questions;
extern const char *const pq_prompt_summary;
extern const char *const pq_prompt_quiz;

// Replaces every {key} of tmpl by the matching value (n pairs); unknown
// {...} are left as they are. Returns a malloc'd string.
char *pq_prompt_fill(const char *tmpl, int n, const char *const *keys, const char *const *values);

// Parses a judge's quiz reply (method.md §1). Valid only with exactly 5
// questions, each with options A-E and an answer letter; 0 ok, -1 with a
// message saying what is wrong.
int pq_quiz_parse_reply(const char *reply, PqQuiz *out, PqErr *e);
// Shuffles question order and option order (remapping answers), seeded.
void pq_quiz_shuffle(PqQuiz *q, uint64_t seed);
// The "questions" field of the schema, and back (validated).
cJSON *pq_quiz_to_json(const PqQuiz *q);
int pq_quiz_from_json(const cJSON *questions, PqQuiz *out, PqErr *e);
// The questions as shown to the judge in the quiz prompt ("Q1) ...\nA. ...").
char *pq_quiz_render(const PqQuiz *q);
void pq_quiz_free(PqQuiz *q);

// Parses the judge's answers ("Q3) B", "Q3) Unsure."): answers[k] is
// 'A'..'E', or 'U' for Unsure / missing / unparsable. Returns how many
// questions got a letter.
int pq_answers_parse(const char *reply, int n_questions, char *answers);

// The bytes of s[0..n) without leading and trailing whitespace as Python's
// str.strip() sees it (Unicode: NBSP, U+3000 ... too): returns the first
// byte kept and sets *len to how many are kept.
const char *pq_strip_space(const char *s, size_t n, size_t *len);

// The same, reading only the method's own reply format, as the recipe's
// parser does: a line (stripped of Unicode whitespace) "Q<k>) X" where X is
// a capital A-E not followed by an ASCII letter or digit, or "Unsure"
// (whitespace between ")" and X allowed); other lines are ignored, and the
// last line for a question wins.
int pq_answers_parse_strict(const char *reply, int n_questions, char *answers);

// Words by whitespace split (method.md §3).
int pq_count_words(const char *s);
// Out-of-distribution characters after NFD with the characters of nonzero
// canonical combining class removed (method.md §3; Python's
// unicodedata.combining), via utf8proc. Invalid UTF-8 bytes count as bad.
int pq_count_bad_chars(const char *s);

#endif
