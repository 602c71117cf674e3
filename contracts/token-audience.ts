/**
 * The audience of the projected service-account tokens with which sidecars prove their pod to the
 * gateway's NAA server: the webhook asks the kubelet for tokens meant for it, and the server has
 * the apiserver accept only those, so a token the gateway sees cannot be replayed at the apiserver.
 */
export const tokenAudience = 'naat';
