// The bits of the conntrack and packet marks naat uses, as fields: a contiguous run of bits that
// holds a small number (an uplink id, a gateway node of a node agent). The defaults sit in the low
// byte, which kube-proxy (0x4000, 0x8000), Calico (0xffff0000) and Cilium's own magic bits
// (0xff00) leave alone; docs/steering.md, "Marks", says who uses which bits and how to move naat's.

/** The default bits: uplink ids on the gateway nodes, the tunnel-reply bit, the node agents' peer ids. */
export const defaultMarks = { uplinks: 0x0000000f, tunnel: 0x00000010, steering: 0x000000e0 } as const;

export interface MarkField {
  mask: number;
  /** The position of the mask's lowest bit. */
  shift: number;
  /** The largest number the field holds. */
  max: number;
}

/** Whether the mask's set bits form one run (0x0000ff00 does, 0x00ff00ff does not). */
export function isContiguous(mask: number): boolean {
  if (mask <= 0) return false;
  const lowest = mask & -mask;
  const shifted = mask / lowest + 1;
  return (shifted & (shifted - 1)) === 0;
}

/** The field of a contiguous mask (see isContiguous). */
export function markField(mask: number): MarkField {
  const shift = 31 - Math.clz32(mask & -mask);
  return { mask, shift, max: mask >>> shift };
}

/** The mark bits that hold `value` in `field`. */
export const markOf = (field: MarkField, value: number): number => (value * 2 ** field.shift) >>> 0;

/** The number `field` holds in `mark`. */
export const valueOf = (field: MarkField, mark: number): number => ((mark & field.mask) >>> 0) / 2 ** field.shift;

export const hexMark = (mark: number): string => `0x${mark.toString(16).padStart(8, '0')}`;
