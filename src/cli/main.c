/* cli/main.c -- kiln's entry point: dispatches to subcommands. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    fprintf(stderr, "usage: kiln <run|ckpt> ...\n");
    return argc > 1 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
}
