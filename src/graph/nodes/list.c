/* graph/nodes/list.c -- the built-in node classes, in /object_info order.
 * Owns: graph__builtin_classes (read by graph/registry.c).
 * To add a class: define `const struct node_class NODE_<Name>` in a graph/nodes/ file, declare
 * it below and list it in the table.
 * Threads: read-only data. */
#include "graph/registry.h"

#include <stddef.h>

/* Model-free nodes (graph/nodes/latent.c, image.c, conditioning.c, save.c). */
extern const struct node_class NODE_EmptyLatentImage, NODE_LatentUpscale, NODE_LatentUpscaleBy,
    NODE_LatentFromBatch, NODE_RepeatLatentBatch;
extern const struct node_class NODE_LoadImage, NODE_ImageScale;
extern const struct node_class NODE_SaveImage, NODE_PreviewImage;
extern const struct node_class NODE_ConditioningCombine, NODE_ConditioningZeroOut;

/* Model nodes (graph/nodes/loaders.c, text.c, sampling.c, vae.c). */
extern const struct node_class NODE_CheckpointLoaderSimple, NODE_CLIPTextEncode, NODE_CLIPSetLastLayer,
    NODE_KSampler, NODE_KSamplerAdvanced, NODE_VAEDecode, NODE_VAEEncode, NODE_CheckpointLoaderPlaced;

/* GPU memory nodes (graph/nodes/vram.c). */
extern const struct node_class NODE_GPUMemoryReserve, NODE_GPUMemoryMonitor, NODE_GPUMemoryCleanup;

const struct node_class *const graph__builtin_classes[] = {
    &NODE_KSampler,
    &NODE_CheckpointLoaderSimple,
    &NODE_CLIPTextEncode,
    &NODE_CLIPSetLastLayer,
    &NODE_VAEDecode,
    &NODE_VAEEncode,
    &NODE_EmptyLatentImage,
    &NODE_LatentUpscale,
    &NODE_LatentUpscaleBy,
    &NODE_LatentFromBatch,
    &NODE_RepeatLatentBatch,
    &NODE_SaveImage,
    &NODE_PreviewImage,
    &NODE_LoadImage,
    &NODE_ImageScale,
    &NODE_ConditioningCombine,
    &NODE_KSamplerAdvanced,
    &NODE_ConditioningZeroOut,
    &NODE_GPUMemoryReserve,
    &NODE_GPUMemoryMonitor,
    &NODE_GPUMemoryCleanup,
    &NODE_CheckpointLoaderPlaced,
    NULL,
};
