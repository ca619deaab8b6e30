// pq-merge: a base model with a LoRA adapter merged into its weights, written
// as a Hugging Face model directory, so any server can serve the tuned model.
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "model.h"
#include "tool.h"

static const char usage[] =
    "usage: pq-merge --model DIR --adapter DIR --out DIR [--dtype bf16|f16|f32]\n"
    "Writes the base model with the PEFT LoRA adapter merged (W + alpha/r B A) as a Hugging Face\n"
    "model directory: model.safetensors in --dtype (default bf16), config.json and the tokenizer files.\n"
    "  -m, --model DIR     the base model directory\n"
    "  -a, --adapter DIR   the adapter (adapter_config.json + adapter_model.safetensors)\n"
    "  -o, --out DIR       the new model directory (must not exist)\n"
    "      --dtype NAME    bf16 (default), f16, f32\n"
    "  -t, --threads N     threads (default: all cores)\n"
    "  -h, --help          this help;  --version  the version\n"
    "Exit status: 0 done, 2 usage, 3 fatal.\n";

enum { OPT_DTYPE = PQ_OPT_TOOL_BASE };

int main(int argc, char **argv) {
    // none of the line tools' options (--output, --resume, --rejects, --seed,
    // --progress): pq-merge reads and writes no JSONL
    static const struct option longopts[] = {{"help", no_argument, 0, 'h'},
                                             {"version", no_argument, 0, PQ_OPT_VERSION},
                                             {"model", required_argument, 0, 'm'},
                                             {"adapter", required_argument, 0, 'a'},
                                             {"out", required_argument, 0, 'o'},
                                             {"dtype", required_argument, 0, OPT_DTYPE},
                                             {"threads", required_argument, 0, 't'},
                                             {0, 0, 0, 0}};
    PqTool T;
    pq_tool_init(&T, "pq-merge", usage);
    const char *model_dir = NULL, *adapter_dir = NULL, *out_dir = NULL;
    PqDtype dtype = PQ_BF16;
    int opt, threads = 0;
    while ((opt = getopt_long(argc, argv, "hm:a:o:t:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': fputs(usage, stdout); pq_tool_exit_flushed(&T); // 3 on a write error
        case PQ_OPT_VERSION: pq_tool_option(&T, opt, optarg); break; // prints the version, exits
        case 'm': model_dir = optarg; break;
        case 'a': adapter_dir = optarg; break;
        case 'o': out_dir = optarg; break;
        case 't': threads = atoi(optarg); break;
        case OPT_DTYPE:
            if (!strcmp(optarg, "bf16")) dtype = PQ_BF16;
            else if (!strcmp(optarg, "f16")) dtype = PQ_F16;
            else if (!strcmp(optarg, "f32")) dtype = PQ_F32;
            else pq_tool_usage_error(&T, "--dtype: bf16, f16 or f32, not '%s'", optarg);
            break;
        default: pq_tool_usage_error(&T, "bad option");
        }
    }
    if (!model_dir || !adapter_dir || !out_dir) pq_tool_usage_error(&T, "--model, --adapter and --out are required");
    if (optind < argc) pq_tool_usage_error(&T, "unexpected argument '%s'", argv[optind]);
    pq_ops_set_threads(threads);
    PqErr e;
    if (pq_clean_stale_dirs(out_dir, T.name, &e) < 0) pq_tool_die(&T, "%s", e.msg);
    PqModel *m = pq_model_load(model_dir, &e);
    if (!m) pq_tool_die(&T, "%s", e.msg);
    PqLora *lora = pq_lora_load(adapter_dir, m, &e);
    if (!lora) pq_tool_die(&T, "%s", e.msg);
    if (pq_lora_merge(m, lora, dtype, out_dir, &e)) pq_tool_die(&T, "%s", e.msg);
    pq_lora_free(lora);
    pq_model_free(m);
    return 0;
}
