/* cli/cmd.h -- kiln's subcommands. Each takes its own argv (argv[0] is the subcommand name)
 * and returns the process exit code: 0 success, 1 failure, 2 usage error.
 * Threads: main thread. */
#ifndef KILN_CLI_CMD_H
#define KILN_CLI_CMD_H

/* kiln ckpt (--tiny|--sd15) [--seed N] PATH: writes a random test checkpoint. */
int cmd_ckpt(int argc, char **argv);

/* kiln serve [options]: ComfyUI's API over one queue and worker per device (cli/cmd_serve.c). */
int cmd_serve(int argc, char **argv);

/* kiln run [options] WORKFLOW.json: runs one workflow on the CPU. */
int cmd_run(int argc, char **argv);

/* kiln bench unet CKPT [...]: seconds per UNet evaluation on the CPU backend. */
int cmd_bench(int argc, char **argv);

/* kiln gpus: a table of the visible GPUs (cli/cmd_gpus.c). */
int cmd_gpus(int argc, char **argv);

#endif
