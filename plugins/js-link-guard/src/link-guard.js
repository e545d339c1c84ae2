// Hookwire example plugin "link-guard", in JavaScript (ComponentizeJS).
//
// Refuses a publication whose JSON payload has a string `text` containing a link
// (http:// or https://) unless the publisher's token has the claim named by
// `allow_claim` (default "trusted") set to true; tags every publication it lets
// through with meta `checked_by: "link-guard-js"`.
//
// The module exports the interfaces of its world (wit/world.wit: the contract's
// `lifecycle` and `on-publish`) as objects; WIT names become camelCase (`on-publish`
// -> `onPublish`), variants are `{ tag, val }`, an `option` a value or undefined,
// `result<_, string>` a return or a thrown string.
import { log } from 'hookwire:plugin/host@0.2.0';

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

export const lifecycle = {
  // hooks undefined: the broker calls every hook the component exports.
  info() {
    return { name: 'link-guard', version: '0.2.0' };
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
};

export const onPublish = {
  onPublish(publication) {
    const text = textOf(publication.data());
    // `claim` answers the claim's JSON text, or undefined when the token lacks it.
    if (text !== null && LINK.test(text) && publication.claim(allowClaim) !== 'true') {
      return {
        tag: 'refuse',
        val: { reason: 'links are allowed only for trusted users', code: 'untrusted_link' },
      };
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
};
