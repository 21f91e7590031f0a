/* tests/fuzz/fuzz_prompt.c -- libFuzzer target: bytes -> graph_json_loads -> the POST /prompt
 * path of api/routes_queue.c without a server: graph_prompt_from_body, graph_prompt_validate
 * against the real node registry (no execution), then the JSON replies serialised as they would
 * be sent (graph_json_dumps). Folders are a scratch tree under /tmp with one (empty) checkpoint
 * and one input image name, so the combo checks of the example prompts can pass.
 * Owns: the scratch tree (fuzz.h). Threads: the fuzzer's. */
#include "base/err.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"
#include "graph/prompt.h"
#include "fuzz.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

static char models[128], input[128], output[128], temp[128];
static struct graph_paths paths;

static void make_dir(char *path, size_t n, const char *leaf) {
    snprintf(path, n, "%s/%s", fuzz_dir(), leaf);
    if (mkdir(path, 0700)) {
        perror(path);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char unused[256];
    make_dir(models, sizeof models, "models");
    make_dir(unused, sizeof unused, "models/checkpoints");
    make_dir(input, sizeof input, "input");
    make_dir(output, sizeof output, "output");
    make_dir(temp, sizeof temp, "temp");
    fuzz_write("models/checkpoints/kiln-demo-tiny.safetensors", "", 0, unused, sizeof unused);
    fuzz_write("input/example.png", "", 0, unused, sizeof unused);
    paths = (struct graph_paths){.models = models, .input = input, .output = output, .temp = temp};
    return 0;
}

static void dump(const json_t *j) {
    if (j) mem_free(graph_json_dumps(j, -1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct err e = {0};
    json_t *body = NULL, *prompt = NULL, *error_body = NULL;
    struct graph_prompt *gp = NULL;
    if (graph_json_loads((const char *)data, size, &body, &e)) return 0;
    if (graph_prompt_from_body(body, true, &prompt, &error_body, &e)) goto done;
    json_t *partial = json_is_object(body) ? json_object_get(body, "partial_execution_targets") : NULL;
    if (json_is_null(partial)) partial = NULL;
    err_clear(&e);
    int rc = graph_prompt_validate(prompt, &paths, partial, &gp, &error_body, &e);
    if (rc == 0) {
        if (!gp || gp->n_outputs < 1) abort(); /* success means at least one valid output */
        json_t *outs = graph_prompt_outputs_json(gp);
        dump(outs);
        json_decref(outs);
        dump(gp->node_errors);
        dump(gp->json);
    } else if (rc != STATUS_ERR_INVALID) {
        fprintf(stderr, "graph_prompt_validate failed internally (%d): %s\n", rc, e.msg);
        abort();
    }
done:
    dump(error_body);
    graph_prompt_free(gp);
    json_decref(error_body);
    json_decref(prompt);
    json_decref(body);
    return 0;
}
