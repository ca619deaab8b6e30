// test-quiz.c: lib/quiz.c on real-shaped judge replies, with what each must
// give written down; shuffle determinism and key remapping; word and OOD counts.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quiz.h"

// ---- quiz replies ----

typedef struct QuizCase {
    const char *name;
    const char *reply;
    const char *key;   // expected answers "ACDBE", or NULL when the reply must be refused
    const char *q3;    // expected text of question 3 (valid replies)
    const char *q3c;   // expected option C of question 3 (valid replies)
    const char *error; // expected message (invalid replies)
} QuizCase;

// The canonical shape of method.md §1, answer after each question.
#define CANON                                                                          \
    "Q1) Which NFL team has Jarryd Hayne signed with?\n"                               \
    "A. Dallas Cowboys\nB. San Francisco 49ers\nC. New England Patriots\n"             \
    "D. Green Bay Packers\nE. Seattle Seahawks\n\nQ1 Answer: B\n\n"                    \
    "Q2) How long is Hayne's contract?\n"                                              \
    "A. One year\nB. Two years\nC. Three years\nD. Four years\nE. Five years\n\n"      \
    "Q2 Answer: C\n\n"                                                                 \
    "Q3) Who said Hayne's move is a boost for rugby league in the US?\n"               \
    "A. Todd Greenberg\nB. Wayne Bennett\nC. Peter Illfield\nD. Jim Harbaugh\n"        \
    "E. Ricky Stuart\n\nQ3 Answer: C\n\n"                                              \
    "Q4) When did Hayne quit the National Rugby League?\n"                             \
    "A. In January\nB. In March\nC. In June\nD. In August\nE. In October\n\n"          \
    "Q4 Answer: E\n\n"                                                                 \
    "Q5) How old is Hayne?\n"                                                          \
    "A. 23\nB. 25\nC. 27\nD. 29\nE. 31\n\nQ5 Answer: C\n"

#define Q3TEXT "Who said Hayne's move is a boost for rugby league in the US?"

static const QuizCase quiz_cases[] = {
    {"canonical shape of method.md", CANON, "BCCEC", Q3TEXT, "Peter Illfield", NULL},

    {"prose before and after",
     "Sure! Here are 5 multiple-choice questions based on the article:\n\n" CANON
     "\nI hope these questions help test understanding of the key points.\n",
     "BCCEC", Q3TEXT, "Peter Illfield", NULL},

    {"bold markdown everywhere",
     "**Q1)** Which NFL team has Jarryd Hayne signed with?\n"
     "**A.** Dallas Cowboys\n**B.** San Francisco 49ers\n**C.** New England Patriots\n"
     "**D.** Green Bay Packers\n**E.** Seattle Seahawks\n\n**Answer:** (B)\n\n"
     "**Q2)** How long is Hayne's contract?\n"
     "**A.** One year\n**B.** Two years\n**C.** Three years\n**D.** Four years\n**E.** Five years\n\n"
     "**Answer:** (C)\n\n"
     "**Q3)** " Q3TEXT "\n"
     "**A.** Todd Greenberg\n**B.** Wayne Bennett\n**C.** Peter Illfield\n**D.** Jim Harbaugh\n"
     "**E.** Ricky Stuart\n\n**Answer:** (C)\n\n"
     "**Q4)** When did Hayne quit the National Rugby League?\n"
     "**A.** In January\n**B.** In March\n**C.** In June\n**D.** In August\n**E.** In October\n\n"
     "**Answer:** (E)\n\n"
     "**Q5)** How old is Hayne?\n"
     "**A.** 23\n**B.** 25\n**C.** 27\n**D.** 29\n**E.** 31\n\n**Answer:** (C)\n",
     "BCCEC", Q3TEXT, "Peter Illfield", NULL},

    {"Q1: with A) options and Answer: X",
     "Q1: Who was arrested?\nA) The mayor\nB) A teacher\nC) The driver\nD) A nurse\nE) The coach\nAnswer: C\n"
     "Q2: Where did it happen?\nA) Ohio\nB) Texas\nC) Utah\nD) Maine\nE) Iowa\nAnswer: B\n"
     "Q3: What was seized?\nA) Cash\nB) Guns\nC) Cocaine\nD) Cars\nE) Jewels\nAnswer: C\n"
     "Q4: How many were hurt?\nA) None\nB) One\nC) Two\nD) Three\nE) Four\nAnswer: A\n"
     "Q5: What is the charge?\nA) Theft\nB) Fraud\nC) Assault\nD) Trafficking\nE) Arson\nAnswer: D\n",
     "CBCAD", "What was seized?", "Cocaine", NULL},

    {"Q1. with (A) options and lowercase answers",
     "Q1. Who won?\n(A) Federer\n(B) Nadal\n(C) Djokovic\n(D) Murray\n(E) Wawrinka\nAnswer: (b)\n\n"
     "Q2. Which tournament?\n(A) Wimbledon\n(B) US Open\n(C) French Open\n(D) Australian Open\n(E) Davis Cup\n"
     "Answer: (c)\n\n"
     "Q3. How many sets were played?\n(A) Three\n(B) Four\n(C) Five\n(D) Two\n(E) Six\nAnswer: (c)\n\n"
     "Q4. What record did the winner set?\n(A) Most aces\n(B) Most titles at the event\n(C) Oldest champion\n"
     "(D) Youngest champion\n(E) Longest final\nAnswer: (b)\n\n"
     "Q5. Who did the winner thank?\n(A) His coach\n(B) His mother\n(C) The crowd\n(D) His rival\n(E) The umpire\n"
     "Answer: (a)\n",
     "BCCBA", "How many sets were played?", "Five", NULL},

    {"Question 1: with lowercase a. options and Correct answer: c",
     "Question 1: What did the study find?\na. Coffee shortens life\nb. Coffee lowers heart risk\n"
     "c. Tea is better than coffee\nd. Coffee causes cancer\ne. No effect was found\nCorrect answer: b\n\n"
     "Question 2: How many people took part?\na. 500\nb. 5,000\nc. 50,000\nd. 500,000\ne. 5 million\n"
     "Correct answer: d\n\n"
     "Question 3: Where was the study published?\na. The Lancet\nb. Nature\nc. BMJ\nd. Circulation\ne. JAMA\n"
     "Correct answer: d\n\n"
     "Question 4: How many cups a day were best?\na. One\nb. Two\nc. Three to five\nd. Seven\ne. Ten\n"
     "Correct answer: c\n\n"
     "Question 5: Who led the research?\na. Harvard\nb. Oxford\nc. Yale\nd. Stanford\ne. MIT\n"
     "Correct answer: a\n",
     "BDDCA", "Where was the study published?", "BMJ", NULL},

    {"1. numbering with A: options",
     "1. What was launched?\nA: A rocket\nB: A phone\nC: A car\nD: A satellite\nE: A game\nAnswer: D\n\n"
     "2. Which agency launched it?\nA: NASA\nB: ESA\nC: ISRO\nD: JAXA\nE: CNSA\nAnswer: C\n\n"
     "3. What is its purpose?\nA: Weather\nB: Navigation\nC: Mapping Mars\nD: Spying\nE: Television\n"
     "Answer: C\n\n"
     "4. How much did it cost?\nA: $7 million\nB: $74 million\nC: $740 million\nD: $7 billion\nE: $1\n"
     "Answer: B\n\n"
     "5. When will it arrive?\nA: 2014\nB: 2015\nC: 2016\nD: 2017\nE: 2018\nAnswer: A\n",
     "DCCBA", "What is its purpose?", "Mapping Mars", NULL},

    {"answers all together at the end",
     "Q1) Which NFL team has Jarryd Hayne signed with?\n"
     "A. Dallas Cowboys\nB. San Francisco 49ers\nC. New England Patriots\nD. Green Bay Packers\nE. Seattle Seahawks\n\n"
     "Q2) How long is Hayne's contract?\n"
     "A. One year\nB. Two years\nC. Three years\nD. Four years\nE. Five years\n\n"
     "Q3) " Q3TEXT "\n"
     "A. Todd Greenberg\nB. Wayne Bennett\nC. Peter Illfield\nD. Jim Harbaugh\nE. Ricky Stuart\n\n"
     "Q4) When did Hayne quit the National Rugby League?\n"
     "A. In January\nB. In March\nC. In June\nD. In August\nE. In October\n\n"
     "Q5) How old is Hayne?\nA. 23\nB. 25\nC. 27\nD. 29\nE. 31\n\n"
     "Q1 Answer: B\nQ2 Answer: C\nQ3 Answer: C\nQ4 Answer: E\nQ5 Answer: C\n",
     "BCCEC", Q3TEXT, "Peter Illfield", NULL},

    {"answer key at the end as 1. X lines under a heading",
     "Q1) Which NFL team has Jarryd Hayne signed with?\n"
     "A. Dallas Cowboys\nB. San Francisco 49ers\nC. New England Patriots\nD. Green Bay Packers\nE. Seattle Seahawks\n\n"
     "Q2) How long is Hayne's contract?\n"
     "A. One year\nB. Two years\nC. Three years\nD. Four years\nE. Five years\n\n"
     "Q3) " Q3TEXT "\n"
     "A. Todd Greenberg\nB. Wayne Bennett\nC. Peter Illfield\nD. Jim Harbaugh\nE. Ricky Stuart\n\n"
     "Q4) When did Hayne quit the National Rugby League?\n"
     "A. In January\nB. In March\nC. In June\nD. In August\nE. In October\n\n"
     "Q5) How old is Hayne?\nA. 23\nB. 25\nC. 27\nD. 29\nE. 31\n\n"
     "**Answers:**\n1. B\n2. C) Three years\n3. C\n4. E\n5. (C)\n",
     "BCCEC", Q3TEXT, "Peter Illfield", NULL},

    {"answer key at the end as Q1) X lines",
     "Q1) Which NFL team has Jarryd Hayne signed with?\n"
     "A. Dallas Cowboys\nB. San Francisco 49ers\nC. New England Patriots\nD. Green Bay Packers\nE. Seattle Seahawks\n"
     "Q2) How long is Hayne's contract?\n"
     "A. One year\nB. Two years\nC. Three years\nD. Four years\nE. Five years\n"
     "Q3) " Q3TEXT "\n"
     "A. Todd Greenberg\nB. Wayne Bennett\nC. Peter Illfield\nD. Jim Harbaugh\nE. Ricky Stuart\n"
     "Q4) When did Hayne quit the National Rugby League?\n"
     "A. In January\nB. In March\nC. In June\nD. In August\nE. In October\n"
     "Q5) How old is Hayne?\nA. 23\nB. 25\nC. 27\nD. 29\nE. 31\n\n"
     "Answer key:\nQ1) B\nQ2) C\nQ3) C\nQ4) E\nQ5) C\n",
     "BCCEC", Q3TEXT, "Peter Illfield", NULL},

    {"answer key on one line, dashes",
     "Here is the quiz.\n\n"
     "Q1. Who was arrested?\nA. The mayor\nB. A teacher\nC. The driver\nD. A nurse\nE. The coach\n\n"
     "Q2. Where did it happen?\nA. Ohio\nB. Texas\nC. Utah\nD. Maine\nE. Iowa\n\n"
     "Q3. What was seized?\nA. Cash\nB. Guns\nC. Cocaine\nD. Cars\nE. Jewels\n\n"
     "Q4. How many were hurt?\nA. None\nB. One\nC. Two\nD. Three\nE. Four\n\n"
     "Q5. What is the charge?\nA. Theft\nB. Fraud\nC. Assault\nD. Trafficking\nE. Arson\n\n"
     "**Answers:** 1-C, 2-B, 3-C, 4-A, 5-D\n",
     "CBCAD", "What was seized?", "Cocaine", NULL},

    {"answer key on one line, Qn) X",
     "**Question 1:** Who was arrested?\nA. The mayor\nB. A teacher\nC. The driver\nD. A nurse\nE. The coach\n\n"
     "**Question 2:** Where did it happen?\nA. Ohio\nB. Texas\nC. Utah\nD. Maine\nE. Iowa\n\n"
     "**Question 3:** What was seized?\nA. Cash\nB. Guns\nC. Cocaine\nD. Cars\nE. Jewels\n\n"
     "**Question 4:** How many were hurt?\nA. None\nB. One\nC. Two\nD. Three\nE. Four\n\n"
     "**Question 5:** What is the charge?\nA. Theft\nB. Fraud\nC. Assault\nD. Trafficking\nE. Arson\n\n"
     "Answer key: Q1) C Q2) B Q3) C Q4) A Q5) (D)\n",
     "CBCAD", "What was seized?", "Cocaine", NULL},

    {"Llama-style: bold question heading, text below, answer with option text in bold",
     "Here are 5 multiple-choice questions based on the text:\n\n"
     "**Question 1**\nWho was arrested?\nA) The mayor\nB) A teacher\nC) The driver\nD) A nurse\nE) The coach\n"
     "**Answer: C) The driver**\n\n"
     "**Question 2**\nWhere did it happen?\nA) Ohio\nB) Texas\nC) Utah\nD) Maine\nE) Iowa\n"
     "**Answer: B) Texas**\n\n"
     "**Question 3**\nWhat was seized?\nA) Cash\nB) Guns\nC) Cocaine\nD) Cars\nE) Jewels\n"
     "**Answer: C) Cocaine**\n\n"
     "**Question 4**\nHow many were hurt?\nA) None\nB) One\nC) Two\nD) Three\nE) Four\n"
     "**Answer: A) None**\n\n"
     "**Question 5**\nWhat is the charge?\nA) Theft\nB) Fraud\nC) Assault\nD) Trafficking\nE) Arson\n"
     "**Answer: D) Trafficking**\n",
     "CBCAD", "What was seized?", "Cocaine", NULL},

    {"markdown headings, question text on its own line, bullet options",
     "### Question 1\nWho was arrested?\n- A. The mayor\n- B. A teacher\n- C. The driver\n- D. A nurse\n- E. The coach\n"
     "*Answer: C*\n\n"
     "### Question 2\nWhere did it happen?\n- A. Ohio\n- B. Texas\n- C. Utah\n- D. Maine\n- E. Iowa\n*Answer: B*\n\n"
     "### Question 3\nWhat was\nseized?\n- A. Cash\n- B. Guns\n- C. Cocaine\n- D. Cars\n- E. Jewels\n*Answer: C*\n\n"
     "### Question 4\nHow many were hurt?\n- A. None\n- B. One\n- C. Two\n- D. Three\n- E. Four\n*Answer: A*\n\n"
     "### Question 5\nWhat is the charge?\n- A. Theft\n- B. Fraud\n- C. Assault\n- D. Trafficking\n- E. Arson\n"
     "*Answer: D*\n",
     "CBCAD", "What was seized?", "Cocaine", NULL},

    {"correct option marked inline",
     "Q1) Who was arrested?\nA. The mayor\nB. A teacher\nC. The driver (correct)\nD. A nurse\nE. The coach\n"
     "Q2) Where did it happen?\nA. Ohio\nB. Texas [correct answer]\nC. Utah\nD. Maine\nE. Iowa\n"
     "Q3) What was seized?\nA. Cash\nB. Guns\nC. Cocaine (Correct)\nD. Cars\nE. Jewels\n"
     "Q4) How many were hurt?\nA. None (correct)\nB. One\nC. Two\nD. Three\nE. Four\n"
     "Q5) What is the charge?\nA. Theft\nB. Fraud\nC. Assault\nD. Trafficking (correct answer)\nE. Arson\n",
     "CBCAD", "What was seized?", "Cocaine", NULL},

    {"'The correct answer is X) text.' sentences",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nThe correct answer is B) Nadal.\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\n"
     "The correct answer is C.\n"
     "Q3) How many sets were played?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\nCorrect Answer - C\n"
     "Q4) What record did the winner set?\nA. Most aces\nB. Most titles at the event\nC. Oldest champion\n"
     "D. Youngest champion\nE. Longest final\nThe answer is: B\n"
     "Q5) Who did the winner thank?\nA. His coach\nB. His mother\nC. The crowd\nD. His rival\nE. The umpire\n"
     "Answer = A\n",
     "BCCBA", "How many sets were played?", "Five", NULL},

    {"Windows line endings and tabs",
     "Q1)\tWho won?\r\nA.\tFederer\r\nB.\tNadal\r\nC.\tDjokovic\r\nD.\tMurray\r\nE.\tWawrinka\r\nQ1 Answer: B\r\n"
     "Q2) Which tournament?\r\nA. Wimbledon\r\nB. US Open\r\nC. French Open\r\nD. Australian Open\r\nE. Davis Cup\r\n"
     "Q2 Answer: C\r\n"
     "Q3) How many sets were played?\r\nA. Three\r\nB. Four\r\nC. Five\r\nD. Two\r\nE. Six\r\nQ3 Answer: C\r\n"
     "Q4) What record did the winner set?\r\nA. Most aces\r\nB. Most titles at the event\r\nC. Oldest champion\r\n"
     "D. Youngest champion\r\nE. Longest final\r\nQ4 Answer: B\r\n"
     "Q5) Who did the winner thank?\r\nA. His coach\r\nB. His mother\r\nC. The crowd\r\nD. His rival\r\nE. The umpire\r\n"
     "Q5 Answer: A\r\n",
     "BCCBA", "How many sets were played?", "Five", NULL},

    {"Answer to Q3: X lines at the end, Q 1 - spacing",
     "Q 1 - Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\n"
     "Q 2 - Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\n"
     "Q 3 - How many sets were played?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\n"
     "Q 4 - What record did the winner set?\nA. Most aces\nB. Most titles at the event\nC. Oldest champion\n"
     "D. Youngest champion\nE. Longest final\n"
     "Q 5 - Who did the winner thank?\nA. His coach\nB. His mother\nC. The crowd\nD. His rival\nE. The umpire\n\n"
     "Answer to Q1: B\nAnswer to Q2: C\nAnswer to Q3: C\nAnswer to Q4: B\nAnswer to Q5: A\n",
     "BCCBA", "How many sets were played?", "Five", NULL},

    // ---- refused replies, with the message that says why ----
    {"only 4 questions",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nQ1 Answer: B\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\nQ2 Answer: C\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\nQ3 Answer: C\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. Oldest\nD. Youngest\nE. Longest\nQ4 Answer: B\n",
     NULL, NULL, NULL, "found 4 questions, need 5"},

    {"question 3 has 4 options",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nQ1 Answer: B\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\nQ2 Answer: C\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nQ3 Answer: C\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. Oldest\nD. Youngest\nE. Longest\nQ4 Answer: B\n"
     "Q5) Who was thanked?\nA. Coach\nB. Mother\nC. Crowd\nD. Rival\nE. Umpire\nQ5 Answer: A\n",
     NULL, NULL, NULL, "question 3 has 4 options, need 5 (A-E)"},

    {"no answer for question 2",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nQ1 Answer: B\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\nQ3 Answer: C\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. Oldest\nD. Youngest\nE. Longest\nQ4 Answer: B\n"
     "Q5) Who was thanked?\nA. Coach\nB. Mother\nC. Crowd\nD. Rival\nE. Umpire\nQ5 Answer: A\n",
     NULL, NULL, NULL, "no answer for question 2"},

    {"answer letter out of range (F) is no answer",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nQ1 Answer: B\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\nQ2 Answer: F\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\nQ3 Answer: C\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. Oldest\nD. Youngest\nE. Longest\nQ4 Answer: B\n"
     "Q5) Who was thanked?\nA. Coach\nB. Mother\nC. Crowd\nD. Rival\nE. Umpire\nQ5 Answer: A\n",
     NULL, NULL, NULL, "no answer for question 2"},

    {"a word starting with a letter is not an answer",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nAnswer: Cats\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\nQ2 Answer: C\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\nQ3 Answer: C\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. Oldest\nD. Youngest\nE. Longest\nQ4 Answer: B\n"
     "Q5) Who was thanked?\nA. Coach\nB. Mother\nC. Crowd\nD. Rival\nE. Umpire\nQ5 Answer: A\n",
     NULL, NULL, NULL, "no answer for question 1"},

    {"six questions",
     CANON "Q6) Which sport?\nA. Rugby\nB. Golf\nC. Polo\nD. Chess\nE. Darts\nQ6 Answer: A\n", NULL, NULL, NULL,
     "found 6 questions, need 5"},

    {"a refusal", "I'm sorry, but I can't create questions for this text.", NULL, NULL, NULL,
     "found 0 questions, need 5"},

    {"an empty reply", "", NULL, NULL, NULL, "found 0 questions, need 5"},

    {"option letter given twice",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nQ1 Answer: B\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nB. French Open\nD. Australian Open\nE. Davis Cup\nQ2 Answer: B\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\nQ3 Answer: C\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. Oldest\nD. Youngest\nE. Longest\nQ4 Answer: B\n"
     "Q5) Who was thanked?\nA. Coach\nB. Mother\nC. Crowd\nD. Rival\nE. Umpire\nQ5 Answer: A\n",
     NULL, NULL, NULL, "question 2 has option B twice"},

    // "Correction: Q2 Answer: D" starts with prose, so it is not an answer
    // line: the reply is valid with the first answers.
    {"a correction in prose is ignored",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nQ1 Answer: B\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\nQ2 Answer: C\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\nQ3 Answer: C\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. Oldest\nD. Youngest\nE. Longest\nQ4 Answer: B\n"
     "Q5) Who was thanked?\nA. Coach\nB. Mother\nC. Crowd\nD. Rival\nE. Umpire\nQ5 Answer: A\n"
     "\nCorrection: Q2 Answer: D\n",
     "BCCBA", "How many sets?", "Five", NULL},

    {"answer for a question that does not exist",
     CANON "Q7 Answer: B\n", NULL, NULL, NULL, "answer for question 7, which does not exist"},

    {"answers at the end given twice, differently",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. Oldest\nD. Youngest\nE. Longest\n"
     "Q5) Who was thanked?\nA. Coach\nB. Mother\nC. Crowd\nD. Rival\nE. Umpire\n"
     "Q1 Answer: B\nQ2 Answer: C\nQ3 Answer: C\nQ4 Answer: B\nQ5 Answer: A\nQ3 Answer: D\n",
     NULL, NULL, NULL, "question 3 has two answers (C and D)"},

    {"a one-line key naming a question that does not exist",
     CANON "Answers: 1-B, 6-A\n", NULL, NULL, NULL, "answer for question 6, which does not exist"},

    {"an empty option",
     "Q1) Who won?\nA. Federer\nB. Nadal\nC. Djokovic\nD. Murray\nE. Wawrinka\nQ1 Answer: B\n"
     "Q2) Which tournament?\nA. Wimbledon\nB. US Open\nC. French Open\nD. Australian Open\nE. Davis Cup\nQ2 Answer: C\n"
     "Q3) How many sets?\nA. Three\nB. Four\nC. Five\nD. Two\nE. Six\nQ3 Answer: C\n"
     "Q4) What record?\nA. Aces\nB. Titles\nC. ****\nD. Youngest\nE. Longest\nQ4 Answer: B\n"
     "Q5) Who was thanked?\nA. Coach\nB. Mother\nC. Crowd\nD. Rival\nE. Umpire\nQ5 Answer: A\n",
     NULL, NULL, NULL, "question 4 option C is empty"},
};

static void test_quiz_replies(void) {
    int n = (int)(sizeof quiz_cases / sizeof *quiz_cases);
    int valid = 0, invalid = 0;
    for (int i = 0; i < n; i++) {
        const QuizCase *c = &quiz_cases[i];
        PqQuiz q;
        PqErr e = {{0}};
        int rc = pq_quiz_parse_reply(c->reply, &q, &e);
        if (c->key) {
            valid++;
            CHECK(rc == 0, "%s: refused: %s", c->name, e.msg);
            if (rc != 0) continue;
            CHECK(q.n == 5, "%s: n=%d", c->name, q.n);
            char key[6] = {0};
            for (int k = 0; k < 5; k++) key[k] = q.q[k].answer;
            CHECK(strcmp(key, c->key) == 0, "%s: key %s, want %s", c->name, key, c->key);
            CHECK(strcmp(q.q[2].question, c->q3) == 0, "%s: Q3 text '%s', want '%s'", c->name, q.q[2].question, c->q3);
            CHECK(strcmp(q.q[2].choices[2], c->q3c) == 0, "%s: Q3 option C '%s', want '%s'", c->name,
                  q.q[2].choices[2], c->q3c);
            for (int k = 0; k < 5; k++)
                for (int j = 0; j < 5; j++)
                    CHECK(q.q[k].choices[j] && q.q[k].choices[j][0] && !strchr(q.q[k].choices[j], '*') &&
                              q.q[k].choices[j][strlen(q.q[k].choices[j]) - 1] != ' ' &&
                              !strchr(q.q[k].choices[j], '\r'),
                          "%s: Q%d option %c badly cleaned: '%s'", c->name, k + 1, 'A' + j, q.q[k].choices[j]);
            pq_quiz_free(&q);
        } else {
            invalid++;
            CHECK(rc == -1, "%s: accepted", c->name);
            if (rc == 0) pq_quiz_free(&q);
            else CHECK(strcmp(e.msg, c->error) == 0, "%s: message '%s', want '%s'", c->name, e.msg, c->error);
        }
    }
    CHECK(valid >= 15 && invalid >= 10, "too few cases: %d valid, %d invalid", valid, invalid);
}

// ---- answer replies ----

typedef struct AnswerCase {
    const char *name;
    const char *reply;
    const char *want; // 5 letters, U = Unsure/missing/unparsable
    int got;          // return value: how many letters
} AnswerCase;

static const AnswerCase answer_cases[] = {
    {"canonical", "Q1) B\nQ2) C\nQ3) Unsure\nQ4) A\nQ5) E\n", "BCUAE", 4},
    {"Unsure with a period", "Q1) Unsure.\nQ2) Unsure.\nQ3) D\nQ4) Unsure.\nQ5) B.\n", "UUDUB", 2},
    {"colon and lowercase", "Q1: b\nQ2: c\nQ3: unsure\nQ4: a\nQ5: e", "BCUAE", 4},
    {"bold numbers", "**Q1)** B\n**Q2)** C\n**Q3)** Unsure\n**Q4)** A\n**Q5)** E\n", "BCUAE", 4},
    {"bold letters", "Q1) **B**\nQ2) **C**\nQ3) **Unsure**\nQ4) **A**\nQ5) **E**\n", "BCUAE", 4},
    {"letter in parentheses with option text", "Q1) (B) Two years\nQ2) (C) Peter Illfield\nQ3) Unsure\n"
                                                "Q4) (A) In October\nQ5) (E) 27\n",
     "BCUAE", 4},
    {"letter with a period and option text", "Q1) B. Two years\nQ2) C. Peter Illfield\nQ3) Unsure.\n"
                                             "Q4) A. In October\nQ5) E. 27\n",
     "BCUAE", 4},
    {"bare numbers", "1) B\n2) C\n3) Unsure\n4) A\n5) E\n", "BCUAE", 4},
    // Unicode whitespace around a line is stripped, as Python's str.strip() does
    {"no-break spaces and U+3000 around lines",
     "\xc2\xa0Q1) B\xc2\xa0\n\xe3\x80\x80Q2) C\n\xe2\x80\x83Q3) Unsure\n\xe2\x80\xafQ4) A\xe3\x80\x80\n"
     "\x0bQ5) E\xc2\x85\n",
     "BCUAE", 4},
    {"no-break space in a bold line", "\xc2\xa0**Q1)** B\n**Q2)**\xc2\xa0" "C\n", "BCUUU", 2},
    {"numbers with periods", "1. B\n2. C\n3. Unsure\n4. A\n5. E\n", "BCUAE", 4},
    {"Answer to Qn", "Answer to Q1: B\nAnswer to Q2: C\nAnswer to Q3: Unsure\nAnswer to Q4: A\nAnswer to Q5: E\n",
     "BCUAE", 4},
    {"Qn Answer:", "Q1 Answer: B\nQ2 Answer: C\nQ3 Answer: Unsure\nQ4 Answer: A\nQ5 Answer: E\n", "BCUAE", 4},
    {"Question n:", "Question 1: B\nQuestion 2: C\nQuestion 3: Unsure\nQuestion 4: A\nQuestion 5: E\n", "BCUAE",
     4},
    {"prose around", "Based only on the summary, here are my answers:\n\nQ1) B\nQ2) C\nQ3) Unsure\nQ4) A\nQ5) E\n\n"
                     "The summary does not mention the third point.",
     "BCUAE", 4},
    {"missing lines are Unsure", "Q1) B\nQ4) A\n", "BUUAU", 2},
    {"unparsable answers are Unsure", "Q1) The summary says Hayne signed\nQ2) not mentioned\nQ3) F\nQ4) ?\nQ5) AB\n",
     "UUUUU", 0},
    {"empty reply", "", "UUUUU", 0},
    {"refusal", "I cannot answer these questions.", "UUUUU", 0},
    {"last answer for a question wins", "Q1) Unsure\nQ2) C\nQ3) Unsure\nQ4) A\nQ5) E\n\nFinal answers:\nQ1) B\nQ3) D\n",
     "BCDAE", 5},
    {"reasoning line does not override", "Q1) B\nQ1) The summary mentions the 49ers, which is option B.\n"
                                         "Q2) C\nQ3) Unsure\nQ4) A\nQ5) E\n",
     "BCUAE", 4},
    {"question numbers out of range are ignored", "Q0) A\nQ1) B\nQ2) C\nQ3) D\nQ4) A\nQ5) E\nQ6) B\n", "BCDAE", 5},
    {"dash and equals separators", "Q1 - B\nQ2 = C\nQ3 - Unsure\nQ4 -A\nQ5) E\n", "BCUAE", 4},
    {"Qn) Answer: X", "Q1) Answer: B\nQ2) Answer: C\nQ3) Answer: Unsure\nQ4) Answer: A\nQ5) Answer: E\n", "BCUAE",
     4},
    {"'The answer is X' and 'Option X'", "Q1) The answer is B\nQ2) Option C\nQ3) The correct answer is: Unsure\n"
                                         "Q4) option a\nQ5) Answer is E.\n",
     "BCUAE", 4},
    // A known ambiguity, decided for the letter: the prompt asks for "Q1) X",
    // so a line starting with a lone A-E is read as that answer.
    {"a sentence starting with the article A reads as the letter A", "Q1) A summary would need more detail\nQ2) C\n",
     "ACUUU", 2},
    {"CRLF and list bullets", "- Q1) B\r\n- Q2) C\r\n- Q3) Unsure\r\n- Q4) A\r\n- Q5) E\r\n", "BCUAE", 4},
    {"no space after the parenthesis", "Q1)B\nQ2)C\nQ3)Unsure\nQ4)A\nQ5)E\n", "BCUAE", 4},
};

static void test_answer_replies(void) {
    int n = (int)(sizeof answer_cases / sizeof *answer_cases);
    CHECK(n >= 15, "too few answer cases");
    for (int i = 0; i < n; i++) {
        const AnswerCase *c = &answer_cases[i];
        char a[6] = {0};
        memset(a, 'x', 5);
        int got = pq_answers_parse(c->reply, 5, a);
        CHECK(strcmp(a, c->want) == 0, "%s: answers %s, want %s", c->name, a, c->want);
        CHECK(got == c->got, "%s: returned %d, want %d", c->name, got, c->got);
    }
    // fewer questions than the reply answers
    char a[3] = {0};
    CHECK(pq_answers_parse("Q1) A\nQ2) B\nQ3) C\n", 2, a) == 2 && a[0] == 'A' && a[1] == 'B' && a[2] == 0,
          "n_questions=2: %.2s", a);
    CHECK(pq_answers_parse(NULL, 2, a) == 0 && a[0] == 'U' && a[1] == 'U', "NULL reply");

    // the method's own format only (tests/py/test_quiz_strict_ref.py checks it against Python)
    static const AnswerCase strict[] = {
        {"canonical", "Q1) B\nQ2) C\nQ3) Unsure\nQ4) A\nQ5) E\n", "BCUAE", 4},
        {"other forms ignored", "Q1: b\n**Q2)** C\nAnswer to Q3: B\n4) A\nq5) E\nQ1) b\n", "UUUUU", 0},
        {"spacing, text after the letter", "Q1)B\nQ2)  C.\nQ3) D. Two years\nQ4) (A)\nQ5) E1\n", "BCDUU", 3},
        {"Unicode whitespace stripped", "\xc2\xa0Q1) B\xe3\x80\x80\r\nQ2)\xc2\xa0" "C\n\xe2\x80\xa8Q3) D\n", "BCDUU", 3},
        {"last line wins, Unsure included", "Q1) B\nQ1) C\nQ2) D\nQ2) Unsure.\nQ05) A\nQ6) A\nQ0) A\n", "CUUUA", 2},
    };
    for (size_t i = 0; i < sizeof strict / sizeof *strict; i++) {
        char s[6] = {0};
        int got = pq_answers_parse_strict(strict[i].reply, 5, s);
        CHECK(!strcmp(s, strict[i].want) && got == strict[i].got, "strict %s: %s (%d), want %s (%d)", strict[i].name, s,
              got, strict[i].want, strict[i].got);
    }
}

// ---- shuffle, JSON, render ----

static void test_shuffle(void) {
    PqQuiz orig, a, b;
    PqErr e;
    if (pq_quiz_parse_reply(CANON, &orig, &e) != 0) {
        CHECK(0, "canonical reply refused: %s", e.msg);
        return;
    }
    int letters_seen[5] = {0}, orders_differ = 0;
    for (uint64_t seed = 0; seed < 40; seed++) {
        pq_quiz_parse_reply(CANON, &a, &e);
        pq_quiz_parse_reply(CANON, &b, &e);
        pq_quiz_shuffle(&a, seed);
        pq_quiz_shuffle(&b, seed);
        // deterministic: the same seed gives the same quiz
        char *ra = pq_quiz_render(&a), *rb = pq_quiz_render(&b);
        CHECK(strcmp(ra, rb) == 0, "seed %llu: two shuffles differ", (unsigned long long)seed);
        for (int i = 0; i < 5; i++) CHECK(a.q[i].answer == b.q[i].answer, "seed %llu: keys differ", (unsigned long long)seed);
        free(ra);
        free(rb);
        // a permutation of the questions, each with a permutation of its options,
        // and the option marked correct is the one that was correct
        int used[5] = {0};
        for (int i = 0; i < 5; i++) {
            int src = -1;
            for (int j = 0; j < 5; j++)
                if (strcmp(a.q[i].question, orig.q[j].question) == 0) src = j;
            CHECK(src >= 0 && !used[src], "seed %llu: question %d lost or doubled", (unsigned long long)seed, i);
            if (src < 0 || used[src]) continue;
            used[src] = 1;
            if (src != i) orders_differ = 1;
            CHECK(a.q[i].answer >= 'A' && a.q[i].answer <= 'E', "bad key");
            const char *correct = orig.q[src].choices[orig.q[src].answer - 'A'];
            CHECK(strcmp(a.q[i].choices[a.q[i].answer - 'A'], correct) == 0,
                  "seed %llu: question '%s' key %c is '%s', want '%s'", (unsigned long long)seed, a.q[i].question,
                  a.q[i].answer, a.q[i].choices[a.q[i].answer - 'A'], correct);
            letters_seen[a.q[i].answer - 'A']++;
            int found[5] = {0};
            for (int k = 0; k < 5; k++)
                for (int m = 0; m < 5; m++)
                    if (strcmp(a.q[i].choices[k], orig.q[src].choices[m]) == 0) found[m]++;
            for (int m = 0; m < 5; m++) CHECK(found[m] == 1, "seed %llu: options not a permutation", (unsigned long long)seed);
        }
        pq_quiz_free(&a);
        pq_quiz_free(&b);
    }
    CHECK(orders_differ, "question order never changed");
    for (int k = 0; k < 5; k++) CHECK(letters_seen[k] > 10, "key letter %c seen %d times in 200", 'A' + k, letters_seen[k]);
    // different seeds give different quizzes
    pq_quiz_parse_reply(CANON, &a, &e);
    pq_quiz_parse_reply(CANON, &b, &e);
    pq_quiz_shuffle(&a, 1);
    pq_quiz_shuffle(&b, 2);
    char *ra = pq_quiz_render(&a), *rb = pq_quiz_render(&b);
    CHECK(strcmp(ra, rb) != 0, "seeds 1 and 2 give the same quiz");
    free(ra);
    free(rb);
    pq_quiz_free(&a);
    pq_quiz_free(&b);
    pq_quiz_free(&orig);
}

static void test_json_render(void) {
    PqQuiz q, back;
    PqErr e;
    pq_quiz_parse_reply(CANON, &q, &e);
    cJSON *j = pq_quiz_to_json(&q);
    char *s = cJSON_PrintUnformatted(j);
    CHECK(strstr(s, "{\"question\":\"Which NFL team has Jarryd Hayne signed with?\",\"choices\":[\"Dallas Cowboys\","
                    "\"San Francisco 49ers\",\"New England Patriots\",\"Green Bay Packers\",\"Seattle Seahawks\"],"
                    "\"answer\":\"B\"}") == s + 1,
          "to_json: %s", s);
    CHECK(pq_quiz_from_json(j, &back, &e) == 0, "from_json: %s", e.msg);
    char *r1 = pq_quiz_render(&q), *r2 = pq_quiz_render(&back);
    CHECK(strcmp(r1, r2) == 0, "round trip differs");
    CHECK(strncmp(r1, "Q1) Which NFL team has Jarryd Hayne signed with?\nA. Dallas Cowboys\nB. San Francisco 49ers\n"
                      "C. New England Patriots\nD. Green Bay Packers\nE. Seattle Seahawks\n\nQ2) How long",
                  strlen("Q1) Which NFL team has Jarryd Hayne signed with?\nA. Dallas Cowboys\nB. San Francisco 49ers\n"
                         "C. New England Patriots\nD. Green Bay Packers\nE. Seattle Seahawks\n\nQ2) How long")) == 0,
          "render: %s", r1);
    CHECK(strstr(r1, "Answer") == NULL, "render shows the answers");
    CHECK(r1[strlen(r1) - 1] == '\n' && r1[strlen(r1) - 2] != '\n', "render ending");
    // the rendered questions parse back (with answers appended)
    free(r1);
    free(r2);
    free(s);
    pq_quiz_free(&back);
    // invalid "questions" fields
    static const char *const bad[][2] = {
        {"{}", "\"questions\" is not an array"},
        {"[]", "\"questions\" has 0 questions, need 5"},
        {"[1,2,3,4,5]", "question 1: no \"question\" string"},
    };
    for (int i = 0; i < 3; i++) {
        cJSON *b = cJSON_Parse(bad[i][0]);
        CHECK(pq_quiz_from_json(b, &back, &e) == -1 && strcmp(e.msg, bad[i][1]) == 0, "from_json %s: %s", bad[i][0],
              e.msg);
        cJSON_Delete(b);
    }
    // mutate one field at a time
    const char *mut[][2] = {{"answer", "F"}, {"answer", "b"}, {"answer", "AB"}};
    for (int i = 0; i < 3; i++) {
        cJSON *b = cJSON_Duplicate(j, 1);
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(b, 3), mut[i][0], cJSON_CreateString(mut[i][1]));
        CHECK(pq_quiz_from_json(b, &back, &e) == -1 && strcmp(e.msg, "question 4: \"answer\" is not a letter A-E") == 0,
              "from_json answer %s: %s", mut[i][1], e.msg);
        cJSON_Delete(b);
    }
    cJSON *b = cJSON_Duplicate(j, 1);
    cJSON_DeleteItemFromArray(cJSON_GetObjectItem(cJSON_GetArrayItem(b, 2), "choices"), 0);
    CHECK(pq_quiz_from_json(b, &back, &e) == -1 &&
              strcmp(e.msg, "question 3: \"choices\" is not an array of 5 strings") == 0,
          "from_json 4 choices: %s", e.msg);
    cJSON_Delete(b);
    b = cJSON_Duplicate(j, 1);
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(cJSON_GetArrayItem(b, 4), "choices"), 1, cJSON_CreateNumber(3));
    CHECK(pq_quiz_from_json(b, &back, &e) == -1 && strcmp(e.msg, "question 5: choice B is not a string") == 0,
          "from_json numeric choice: %s", e.msg);
    cJSON_Delete(b);
    cJSON_Delete(j);
    pq_quiz_free(&q);
}

static void test_prompts(void) {
    CHECK(strstr(pq_prompt_questions, "{article}") && strstr(pq_prompt_questions, "multiple-choice") &&
              strstr(pq_prompt_questions, "Q1 Answer: C") && strstr(pq_prompt_questions, "Q1) "),
          "questions prompt");
    CHECK(strstr(pq_prompt_summary, "{article}") && strstr(pq_prompt_summary, "very short summary") &&
              strstr(pq_prompt_summary, "at most 2 sentences"),
          "summary prompt");
    CHECK(strstr(pq_prompt_quiz, "{summary}") && strstr(pq_prompt_quiz, "{questions}") &&
              strstr(pq_prompt_quiz, "Unsure") && strstr(pq_prompt_quiz, "Q1) X"),
          "quiz prompt");
    // the example in the questions prompt is itself the shape the parser reads
    const char *keys[] = {"a", "b"}, *vals[] = {"1", "{b}"};
    char *s = pq_prompt_fill("x{a}y{b}z{c}{a", 2, keys, vals);
    CHECK(strcmp(s, "x1y{b}z{c}{a") == 0, "fill: %s", s);
    free(s);
    s = pq_prompt_fill("{}{ab}{a}", 2, keys, vals);
    CHECK(strcmp(s, "{}{ab}1") == 0, "fill: %s", s);
    free(s);
    const char *k1[] = {"article"}, *v1[] = {"Text with {summary} inside."};
    s = pq_prompt_fill(pq_prompt_summary, 1, k1, v1);
    CHECK(strstr(s, "Text with {summary} inside.") && !strstr(s, "{article}"), "fill summary prompt");
    free(s);
}

// ---- counts ----

static void test_counts(void) {
    static const struct {
        const char *s;
        int words;
    } w[] = {
        {"", 0},
        {"   ", 0},
        {"one", 1},
        {" Hayne signed  with the\n49ers.\t", 5},
        {"a\r\nb\vc\fd", 4},
        {"a\xc2\xa0" "b", 2},         // NO-BREAK SPACE separates (Zs), as in Python's str.split()
        {"a\xe2\x80\x83" "b", 2},     // EM SPACE
        {"a\xe2\x80\x8b" "b", 1},     // ZERO WIDTH SPACE does not (Cf)
        {"a\xe3\x80\x80" "b", 2},     // IDEOGRAPHIC SPACE
        {"caf\xc3\xa9 \xff x", 3},    // an invalid byte is part of a word
        {"\xe2\x80\x94", 1},          // an em dash alone is a word
    };
    for (size_t i = 0; i < sizeof w / sizeof *w; i++)
        CHECK(pq_count_words(w[i].s) == w[i].words, "words('%s') = %d, want %d", w[i].s, pq_count_words(w[i].s),
              w[i].words);

    // OOD rule (method.md §3): after NFD with combining marks removed, bad
    // unless ASCII letter/digit/whitespace/punctuation or one of the listed.
    static const struct {
        const char *s;
        int bad;
        const char *why;
    } b[] = {
        {"", 0, "empty"},
        {"Plain ASCII: 1, 2 & 3 (ok)? [yes] {no} ~`^|\\/\"'@#$%*+-=<>_;!", 0, "all ASCII punctuation"},
        {"\t\n\r\v\f ", 0, "ASCII whitespace"},
        {"caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 S\xc3\xa3o Paulo", 0, "accents go with NFD"},
        {"e\xcc\x81", 0, "a lone combining acute after e is removed"},
        {"\xc3\x85ngstr\xc3\xb6m \xe2\x84\xab", 0, "U+212B ANGSTROM SIGN decomposes to A + ring"},
        {"\xe2\x80\x9cquoted\xe2\x80\x9d \xe2\x80\x98single\xe2\x80\x99 it\xe2\x80\x99s", 0, "curly quotes"},
        {"\xe2\x80\x93\xe2\x80\x94\xe2\x80\xa6\xe2\x84\xa2\xc2\xb0\xc3\x86\xc3\xa6\xc2\xa3\xe2\x82\xac", 0,
         "the listed – — … ™ ° Æ æ £ €"},
        {"\xf0\x9f\x98\x80", 1, "emoji"},
        {"\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", 2, "emoji with a skin-tone modifier (Sk, not a mark)"},
        {"\xe4\xb8\xad\xe6\x96\x87", 2, "CJK"},
        {"\xed\x95\x9c", 3, "Hangul syllable: NFD gives 3 jamo, none allowed"},
        {"stra\xc3\x9f" "e", 1, "sharp s: not ASCII, no decomposition"},
        {"\xc3\x98" "resund", 1, "O with stroke: no decomposition"},
        {"\xef\xac\x81", 1, "fi ligature: only a compatibility decomposition"},
        {"\xc2\xbd \xc2\xa5 \xc2\xa9", 3, "one half, yen, copyright"},
        {"a\xc2\xa0" "b", 1, "NO-BREAK SPACE is not ASCII whitespace"},
        {"\x01\x7f", 2, "ASCII control characters"},
        {"\xd0\x9c\xd0\xbe\xd1\x81\xd0\xba\xd0\xb2\xd0\xb0", 6, "Cyrillic"},
        {"\xce\x86", 1, "Greek Alpha with tonos: NFD leaves Greek Alpha"},
        {"\xff", 1, "invalid byte"},
        {"ok\xc3", 1, "truncated sequence at the end"},
        {"\xc3\x28", 1, "bad continuation: one bad byte, then '(' is fine"},
        {"\xed\xa0\x80", 3, "an encoded surrogate: three bad bytes"},
        {"\xc0\xaf", 2, "overlong encoding: two bad bytes"},
        // marks of combining class 0 stay after NFD and count (Python's unicodedata.combining() is 0)
        {"Word \xe2\x84\xa2\xef\xb8\x8f word", 1, "TM + VARIATION SELECTOR-16 (Mn, class 0)"},
        {"1\xe2\x83\xa3", 1, "COMBINING ENCLOSING KEYCAP (Me, class 0)"},
        {"a\xe2\x83\x9d", 1, "COMBINING ENCLOSING CIRCLE (Me, class 0)"},
        {"a\xcd\x8f" "b", 1, "COMBINING GRAPHEME JOINER (Mn, class 0)"},
        {"\xe0\xa4\x95\xe0\xa4\xbf", 2, "Devanagari KA + VOWEL SIGN I (Mc, class 0)"},
        {"\xe0\xb8\x81\xe0\xb8\xb1", 2, "Thai KO KAI + MAI HAN-AKAT (Mn, class 0)"},
        {"\xe0\xa4\x95\xe0\xa4\x83", 2, "Devanagari KA + VISARGA (Mc, class 0)"},
        {"\xe0\xa4\x95\xe0\xa4\xbc", 1, "Devanagari KA + NUKTA (Mn, class 7): the nukta is dropped"},
    };
    for (size_t i = 0; i < sizeof b / sizeof *b; i++)
        CHECK(pq_count_bad_chars(b[i].s) == b[i].bad, "bad_chars(%s) = %d, want %d", b[i].why,
              pq_count_bad_chars(b[i].s), b[i].bad);
}

int main(void) {
    test_quiz_replies();
    test_answer_replies();
    test_shuffle();
    test_json_render();
    test_prompts();
    test_counts();
    printf("test-quiz: %d checks, %d failures\n", n_checks, n_fail);
    return n_fail ? 1 : 0;
}
