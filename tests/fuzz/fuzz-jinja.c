// fuzz-jinja: libFuzzer target for the Jinja interpreter: the input is a
// template (untrusted, as one arriving with downloaded weights); it is
// parsed and, when it parses, rendered over a conversation, under small
// limits. Bytes after a NUL, when they are a JSON object, replace the
// conversation (values with invalid UTF-8, deep nesting, odd types). Any crash, leak, hang or sanitizer report is a bug; errors are not.
//   make fuzz [FUZZ_TIME=300]   (seeded with tests/fixtures/templates/)
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jinja.h"

static cJSON *vars;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!vars)
        vars = cJSON_Parse(
            "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
            "{\"role\": \"user\", \"content\": \" Hi \\u00e9 \\ud83d\\ude00\\n\"},"
            "{\"role\": \"assistant\", \"content\": \"<think>\\nx\\n</think>\\n\\nHello\", \"reasoning_content\": \"r\","
            "\"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1.5, \"b\": [true, null]}}}]},"
            "{\"role\": \"tool\", \"content\": \"{}\"},"
            "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"parts\"}]}],"
            "\"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"tools\": null,"
            "\"documents\": null, \"enable_thinking\": false}");
    char *src = malloc(size + 1);
    memcpy(src, data, size);
    src[size] = 0;
    size_t tl = strlen(src);
    cJSON *own = tl < size ? cJSON_ParseWithLength(src + tl + 1, size - tl - 1) : NULL;
    if (own && !cJSON_IsObject(own)) cJSON_Delete(own), own = NULL;
    PqErr e;
    PqJinja *t = pq_jinja_parse(src, &e);
    free(src);
    if (!t) {
        cJSON_Delete(own);
        return 0;
    }
    PqJinjaLimits lim = {32, 100000, 1 << 20, 64u << 20};
    struct tm now = {.tm_year = 124, .tm_mon = 6, .tm_mday = 26};
    char *r = pq_jinja_render(t, own ? own : vars, &now, &lim, &e);
    free(r);
    pq_jinja_free(t);
    cJSON_Delete(own);
    return 0;
}
