// Type declarations for @hookwire/client (hookwire.js): Hookwire protocol v1.

export type ClientState = 'disconnected' | 'connecting' | 'connected' | 'closed';
export type TransportKind = 'webtransport' | 'websocket';

/** Server error codes, and the client's own. */
export type ErrorCode =
  | 'bad_request' | 'unauthorized' | 'token_expired' | 'forbidden' | 'not_found'
  | 'rate_limited' | 'too_large' | 'rejected' | 'unavailable' | 'internal'
  // client-side:
  | 'timeout' | 'disconnected' | 'closed' | 'dropped' | 'token' | 'transport'
  | 'bad_frame' | 'already_subscribed' | 'unsubscribed'
  | (string & {});

export class HookwireError extends Error {
  constructor(code: ErrorCode, message: string, extra?: Record<string, unknown>);
  readonly name: 'HookwireError';
  code: ErrorCode;
  /** The server's `error` frame, when the error came from the server. */
  frame?: ErrorFrame;
  /** For code `dropped`: why the publish left the offline queue. */
  reason?: 'queue_full' | 'closed';
  cause?: unknown;
}

export interface StreamPosition {
  offset: number;
  epoch: string;
}

export interface Publication<T = unknown> {
  channel: string;
  /** Absent on volatile publications (e.g. WebTransport datagrams). */
  offset?: number;
  ts?: number;
  data: T;
  user?: string;
  meta?: Record<string, unknown>;
}

export interface ConnectedFrame {
  id: number;
  type: 'connected';
  client: string;
  user: string;
  /** Unix seconds. */
  expires: number;
  node: string;
  [field: string]: unknown;
}

export interface ConnectedEvent extends ConnectedFrame {
  transport: TransportKind;
}

export interface ErrorFrame {
  id?: number;
  type: 'error';
  code: ErrorCode;
  message: string;
}

export interface PublishedFrame {
  id: number;
  type: 'published';
  channel: string;
  offset: number;
}

export interface HistoryFrame<T = unknown> {
  id: number;
  type: 'history';
  channel: string;
  offset: number;
  epoch: string;
  publications: Publication<T>[];
  /** Hookwire extension: the reply was cut; read on with `since: {offset: next_offset, epoch}`. */
  more?: boolean;
  next_offset?: number;
}

export interface PresenceClient {
  client: string;
  user: string;
  info: Record<string, unknown>;
}

export interface PresenceFrame {
  id: number;
  type: 'presence';
  channel: string;
  clients: PresenceClient[];
  more?: boolean;
}

export interface RefreshedFrame {
  id: number;
  type: 'refreshed';
  expires: number;
}

export interface PongFrame {
  id: number;
  type: 'pong';
}

export interface JoinLeaveFrame {
  type: 'join' | 'leave';
  channel: string;
  client: string;
  user: string;
  info?: Record<string, unknown>;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  reconnect: boolean;
  /** Milliseconds until the next attempt, when `reconnect` is true. */
  delay?: number;
}

export interface PublishDroppedEvent {
  channel: string;
  data: unknown;
  key?: string;
  reason: 'queue_full' | 'closed';
}

export interface SubscribedContext {
  channel: string;
  offset: number;
  epoch: string;
  /** True when a recovery was asked and the server filled the gap exactly. */
  recovered: boolean;
  /** True when `recover` was sent (a resubscribe after a reconnect with a known position). */
  wasRecovering: boolean;
}

export interface RecoveryFailedEvent extends SubscribedContext {
  subscription: Subscription;
  /** The position the client asked to recover from. */
  since: StreamPosition;
}

export interface UnsubscribedEvent {
  channel: string;
  reason: string;
  /** True when the server (or a refused subscribe) ended it; false for unsubscribe(). */
  server: boolean;
}

export interface FallbackEvent {
  from: TransportKind;
  to: TransportKind;
  reason: string;
}

export interface CertificateHash {
  algorithm: 'sha-256' | (string & {});
  /** Bytes, or a hex string (separators such as ':' are ignored). */
  value: Uint8Array | ArrayBuffer | string;
}

export interface WebTransportOptions {
  /** e.g. 'https://127.0.0.1:4433/wt' */
  url: string;
  serverCertificateHashes?: CertificateHash[];
  /** Time for the session to open and answer `connected` before falling back. Default 5000. */
  timeoutMs?: number;
}

export interface BackoffOptions {
  /** Default 500. */
  baseMs?: number;
  /** Cap of the exponential window. Default 20000. */
  maxMs?: number;
  /** A connection that lasted this long resets the backoff. Default 10000. */
  resetAfterMs?: number;
  /** Returns [0, 1); injectable for tests. Default Math.random. */
  random?: () => number;
}

export interface HookwireOptions {
  /** Returns (a promise of) a JWT; called for every connection attempt and every refresh. */
  getToken?: () => string | Promise<string>;
  /** Optional client name sent in `connect`. */
  name?: string;
  webtransport?: WebTransportOptions;
  /** Order of preference. Default ['webtransport', 'websocket']. */
  transports?: TransportKind[];
  /** Sessions to skip a transport for after it failed where a later one worked. Default 3; Infinity = never retry. */
  retryTransportAfter?: number;
  backoff?: BackoffOptions;
  /** Offline publish queue bound; the oldest is dropped past it. Default 100. */
  maxQueuedPublishes?: number;
  /** Refresh this long before `expires`. Default 30000, at least 1000. */
  refreshMarginMs?: number;
  /** Per-request reply timeout. Default 10000. */
  requestTimeoutMs?: number;
  /** WebSocket open + `connected` timeout. Default 10000. */
  connectTimeoutMs?: number;
  /** Frames larger than this are refused locally with `too_large`. Default 65536. */
  maxFrameBytes?: number;
  /** Connect from the constructor. Default true. */
  autoConnect?: boolean;
  /** WebSocket constructor; defaults to globalThis.WebSocket. */
  WebSocket?: new (url: string, protocols?: string | string[]) => any;
  /** WebTransport constructor; defaults to globalThis.WebTransport. */
  WebTransport?: new (url: string, options?: any) => any;
}

export interface ClientEvents {
  state: (next: ClientState, prev: ClientState) => void;
  connected: (info: ConnectedEvent) => void;
  disconnected: (info: DisconnectedEvent) => void;
  error: (err: HookwireError | Error) => void;
  publishDropped: (info: PublishDroppedEvent) => void;
  recoveryFailed: (info: RecoveryFailedEvent) => void;
  refreshed: (frame: RefreshedFrame) => void;
  fallback: (info: FallbackEvent) => void;
}

export interface SubscriptionEvents {
  subscribed: (ctx: SubscribedContext) => void;
  unsubscribed: (info: UnsubscribedEvent) => void;
  join: (frame: JoinLeaveFrame) => void;
  leave: (frame: JoinLeaveFrame) => void;
  error: (err: HookwireError) => void;
}

export type MessageHandler<T = any> = (data: T, publication: Publication<T>) => void;

export class Subscription<T = any> {
  readonly channel: string;
  /** Last offset seen (or the stream's offset at subscribe); null before the first `subscribed`. */
  readonly offset: number | null;
  readonly epoch: string | null;
  readonly state: 'subscribing' | 'subscribed' | 'unsubscribed';
  /** Resolves at the first `subscribed`; rejects if the subscription ends before. */
  readonly ready: Promise<SubscribedContext>;
  on<E extends keyof SubscriptionEvents>(event: E, fn: SubscriptionEvents[E]): this;
  off<E extends keyof SubscriptionEvents>(event: E, fn: SubscriptionEvents[E]): this;
  once<E extends keyof SubscriptionEvents>(event: E, fn: SubscriptionEvents[E]): this;
  unsubscribe(): Promise<void>;
}

export class Hookwire {
  constructor(url: string, options?: HookwireOptions);
  readonly url: string;
  readonly state: ClientState;
  connect(): void;
  disconnect(): void;
  on<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  off<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  once<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  subscribe<T = any>(channel: string, onMessage?: MessageHandler<T>): Subscription<T>;
  getSubscription(channel: string): Subscription | null;
  publish(channel: string, data: unknown, options?: { key?: string }): Promise<PublishedFrame>;
  presence(channel: string): Promise<PresenceFrame>;
  history<T = any>(channel: string, options?: { limit?: number; since?: StreamPosition }): Promise<HistoryFrame<T>>;
  ping(): Promise<PongFrame>;
}

export default Hookwire;
