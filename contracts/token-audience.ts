/**
 * The audience of the projected service-account tokens with which sidecars prove their pod to the
 * gateway's NAA server: the webhook asks the kubelet for tokens meant for it, and the server has
 * the apiserver accept only those, so a token the gateway sees cannot be replayed at the apiserver.
 */
export const tokenAudience = 'naat';

/**
 * The audience of the tokens with which callers read a gateway agent's flow data on its secure
 * listener (`kubectl create token NAME --audience naat-flows`): a token sent to an agent cannot be
 * replayed at the apiserver, nor at a sidecar's NAA stream.
 */
export const flowsTokenAudience = 'naat-flows';
