/* tests/gpu/test_models_cuda_f16.c -- tests/unit/model/test_models.c on the CUDA backend with the
 * storage kiln uses on GPUs (sd_storage_for: UNet fp16, text encoder fp16 weights computed in
 * fp32, VAE bf16, through the shared host store), against the same fp32 PyTorch reference.
 * Tolerances (max |got - want| / max |want|): fp16 keeps 11 bits (4.9e-4 per rounding), so the
 * text encoder (fp32 maths on fp16-rounded weights) and the fp16 UNet stay within 1e-2; bf16 keeps
 * 8 bits (3.9e-3 per rounding) and the VAE's activations are rounded at every layer: 5e-2.
 * Needs a CUDA device; without one every test is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "model/sd.h"
#include "model/wstore.h"
#include "tensor/backend.h"

#include <stdio.h>

static struct backend *models_backend_cuda(struct err *err) {
    int n = backend_cuda_count();
    printf("CUDA devices: %d\n", n);
    return n > 0 ? backend_cuda_new(0, err) : NULL;
}

static struct sd_storage gpu_storage;

static const struct sd_storage *storage_of(const struct backend *b) {
    gpu_storage = sd_storage_for(b, false, wstore_global());
    return &gpu_storage;
}

#define MODELS_BACKEND models_backend_cuda
#define MODELS_EXTRA_TESTS
#define MODELS_STORAGE storage_of(be)
#define MODELS_TOL_CLIP 1e-2
#define MODELS_TOL_UNET 1e-2
#define MODELS_TOL_VAE 5e-2
#include "unit/model/test_models.c"
