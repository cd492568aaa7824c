// Per-pixel arithmetic of upfirdn2d, shared by the CUDA kernel and (through the host side of
// FSG_HOST_DEVICE) by a plain C++ build, so the index math can be checked on a machine without a GPU.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FSG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FSG_HOST_DEVICE inline
#endif

// Geometry of one call, in the convention of ops.upfirdn2d: each axis is zero-inserted to
// `in * up` samples (up - 1 zeros after every sample), padded by (pad0, pad1) (negative crops),
// convolved with the kernel, and every `down`-th sample kept.
struct UpFirDn2dGeometry {
    int in_h, in_w;
    int out_h, out_w;
    int kernel_h, kernel_w;
    int up, down;
    int pad_y0, pad_x0;
};

FSG_HOST_DEVICE int floor_mod(int a, int b) {
    const int r = a % b;
    return r < 0 ? r + b : r;
}

// Output pixel (oy, ox) of one image plane. Visiting only the taps that land on real samples
// (every `up`-th one) skips the inserted zeros instead of multiplying by them.
template <typename acc_t, typename scalar_t>
FSG_HOST_DEVICE acc_t upfirdn2d_pixel(const scalar_t* plane, const scalar_t* kernel, const UpFirDn2dGeometry& g,
                                      int oy, int ox) {
    // Tap t of the output reads position (o * down + t - pad0) of the zero-inserted image.
    const int y_start = oy * g.down - g.pad_y0;
    const int x_start = ox * g.down - g.pad_x0;
    acc_t sum = 0;
    for (int ty = floor_mod(-y_start, g.up); ty < g.kernel_h; ty += g.up) {
        const int iy = (y_start + ty) / g.up;  // exact: y_start + ty is a multiple of up
        if (iy < 0 || iy >= g.in_h) continue;
        for (int tx = floor_mod(-x_start, g.up); tx < g.kernel_w; tx += g.up) {
            const int ix = (x_start + tx) / g.up;
            if (ix < 0 || ix >= g.in_w) continue;
            // A true convolution, like ops.upfirdn2d's conv2d with the flipped kernel.
            const scalar_t k = kernel[(g.kernel_h - 1 - ty) * g.kernel_w + (g.kernel_w - 1 - tx)];
            sum += static_cast<acc_t>(plane[static_cast<int64_t>(iy) * g.in_w + ix]) * static_cast<acc_t>(k);
        }
    }
    return sum;
}
