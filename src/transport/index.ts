// The transport: a framed binary protocol over TCP (+TLS-PSK) with a versioned
// handshake, two priority classes and link shaping. See each module's header.

export { CODES, Code, codeInfo, codeName, resolveCode, type CodeInfo, type CodeName, type CodeSpec, type Priority } from './codes.ts';
export { encodeFrame, FrameDecoder, FRAME_PREFIX, DEFAULT_MAX_FRAME, DEFAULT_MAX_HEADER, type BodySink, type Frame, type FrameLimits, type Header } from './frame.ts';
export { MAGIC, PROTOCOL_VERSION, SUPPORTED_VERSIONS, BASE_CAPABILITIES, encodePreamble, type HelloInfo, type HandshakeOptions } from './handshake.ts';
export { Connection, OutgoingStream, IncomingStream, type Message, type Reply, type RequestHandler, type MessageHandler, type SendOptions, type RequestOptions } from './connection.ts';
export { Shaper, parseBandwidth, parseLatency, type ShapingOptions } from './shaper.ts';
export { generateKey, loadKey, writeKey, parseKey, formatKey, PSK_IDENTITY, PSK_CIPHERS, type KeyInput } from './tls.ts';
export { listen, FerryServer, type ListenOptions, type EndpointOptions } from './server.ts';
export { connect, type ConnectOptions } from './client.ts';
