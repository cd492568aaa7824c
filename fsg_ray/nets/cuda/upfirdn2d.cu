// upfirdn2d on CUDA: one thread per output pixel, arithmetic in upfirdn2d.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs the cuBLAS/cuSPARSE headers
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "upfirdn2d.h"

template <typename scalar_t>
__global__ void upfirdn2d_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                 const scalar_t* __restrict__ kernel, UpFirDn2dGeometry g, int64_t total) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t out_plane = static_cast<int64_t>(g.out_h) * g.out_w;
    const int64_t in_plane = static_cast<int64_t>(g.in_h) * g.in_w;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
        const int64_t plane = i / out_plane;
        const int oy = static_cast<int>((i % out_plane) / g.out_w);
        const int ox = static_cast<int>(i % g.out_w);
        out[i] = static_cast<scalar_t>(upfirdn2d_pixel<acc_t>(x + plane * in_plane, kernel, g, oy, ox));
    }
}

at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& kernel, int64_t up, int64_t down, int64_t pad_x0,
                     int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4, "upfirdn2d: x must be a 4-D CUDA tensor, got ", x.sizes(), " on ",
                x.device());
    TORCH_CHECK(kernel.dim() == 2 && kernel.device() == x.device() && kernel.scalar_type() == x.scalar_type(),
                "upfirdn2d: kernel must be 2-D with x's device and dtype");
    TORCH_CHECK(up >= 1 && down >= 1, "upfirdn2d: up and down must be >= 1, got ", up, " and ", down);
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor x_c = x.contiguous();
    const at::Tensor kernel_c = kernel.contiguous();

    UpFirDn2dGeometry g;
    g.in_h = static_cast<int>(x.size(2));
    g.in_w = static_cast<int>(x.size(3));
    g.kernel_h = static_cast<int>(kernel.size(0));
    g.kernel_w = static_cast<int>(kernel.size(1));
    g.up = static_cast<int>(up);
    g.down = static_cast<int>(down);
    g.pad_y0 = static_cast<int>(pad_y0);
    g.pad_x0 = static_cast<int>(pad_x0);
    const int64_t span_h = x.size(2) * up + pad_y0 + pad_y1 - g.kernel_h;
    const int64_t span_w = x.size(3) * up + pad_x0 + pad_x1 - g.kernel_w;
    TORCH_CHECK(span_h >= 0 && span_w >= 0, "upfirdn2d: the kernel is larger than the padded input");
    g.out_h = static_cast<int>(span_h / down + 1);
    g.out_w = static_cast<int>(span_w / down + 1);

    at::Tensor out = at::empty({x.size(0), x.size(1), g.out_h, g.out_w}, x.options());
    const int64_t total = out.numel();
    if (total == 0) return out;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65536);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d", [&] {
        upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            out.data_ptr<scalar_t>(), x_c.data_ptr<scalar_t>(), kernel_c.data_ptr<scalar_t>(), g, total);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
