// Hookwire example plugin "link-guard", in JavaScript (ComponentizeJS).
//
// Refuses a publication whose JSON payload has a string `text` containing a link
// (http:// or https://) unless the publisher's token has the claim named by
// `allow_claim` (default "trusted") set to true; tags every publication it lets
// through with meta `checked_by: "link-guard-js"`.
//
// The module exports the `hooks` interface of wit/hookwire.wit as an object; WIT
// names become camelCase (`on-publish` -> `onPublish`), variants are `{ tag, val }`,
// flags an object of booleans, `result<_, string>` a return or a thrown string.
import { log } from 'hookwire:plugin/host@0.1.0';

const LINK = /\bhttps?:\/\/\S/i;

let allowClaim = 'trusted';

function textOf(bytes) {
  try {
    const data = JSON.parse(new TextDecoder().decode(bytes));
    return typeof data?.text === 'string' ? data.text : null;
  } catch {
    return null;
  }
}

export const hooks = {
  info() {
    return { name: 'link-guard', version: '0.1.0', hooks: { publish: true } };
  },

  // config: JSON text, e.g. {"allow_claim": "trusted"}. A thrown string fails the load.
  init(config) {
    let cfg;
    try {
      cfg = JSON.parse(config || '{}');
    } catch (e) {
      throw `config is not valid JSON: ${e.message}`;
    }
    if (cfg.allow_claim !== undefined) {
      if (typeof cfg.allow_claim !== 'string' || cfg.allow_claim === '') {
        throw 'config.allow_claim must be a non-empty string';
      }
      allowClaim = cfg.allow_claim;
    }
    log('info', `link-guard ready: links allowed for claim ${allowClaim}`);
  },

  onPublish(publication) {
    const text = textOf(publication.data());
    // `claim` answers the claim's JSON text, or undefined when the token lacks it.
    if (text !== null && LINK.test(text) && publication.claim(allowClaim) !== 'true') {
      return { tag: 'refuse', val: 'links are allowed only for trusted users' };
    }
    return {
      tag: 'modify',
      val: {
        addMeta: [{ key: 'checked_by', value: '"link-guard-js"' }],
        addChannels: [],
        emit: [],
      },
    };
  },

  // Not declared in info().hooks, so never called; the 0.1.0 contract requires them.
  onConnect() {
    return { tag: 'accept' };
  },
  onSubscribe() {
    return { tag: 'allow' };
  },
  onDisconnect() {},
};
